"""CLIP's byte-level BPE tokenizer, read from a local merges file (`bpe_simple_vocab_16e6.txt.gz` format).

The vocabulary is rebuilt from the merges the way CLIP does: the 256 byte symbols, the same 256 as word ends
(`</w>`), one symbol per merge in rank order, then `<|startoftext|>` and `<|endoftext|>`. The merges file is the
only input; nothing is downloaded. Text is cleaned (NFC, straight quotes, HTML entities, whitespace, lower case;
ftfy's mojibake repair is not reproduced), split into words, numbers and punctuation runs, and each word is merged
pair by pair, lowest merge rank first. Written from the algorithm's description; checked here only against merges
files made by the tests (no real CLIP merges file is on this machine).
"""

from __future__ import annotations

import gzip
import html
import re
import unicodedata
from functools import lru_cache
from pathlib import Path

import torch

from normalcy.errors import WeightsMismatchError, WeightsNotFoundError

START, END = "<|startoftext|>", "<|endoftext|>"
END_OF_WORD = "</w>"
CLIP_MERGES = 49152 - 256 - 2  # merges used by every OpenAI CLIP text tower (vocabulary of 49,408)
CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")


@lru_cache(maxsize=1)
def byte_symbols() -> dict[int, str]:
    """A printable unicode character for every byte: printable Latin-1 bytes stand for themselves, the others are
    shifted above 255 (so BPE never sees whitespace or control characters, and every byte string is reversible)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u201c": '"', "\u201d": '"',
                         "\u201e": '"', "\u201f": '"'})


def clean_text(text: str) -> str:
    """What CLIP's cleaning does to ordinary text: NFC, straight quotes (two of ftfy's defaults; its mojibake repair is
    not reproduced), HTML entities decoded twice, whitespace runs collapsed, lower case."""
    text = unicodedata.normalize("NFC", text).translate(_QUOTES)
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip().lower()


def _kind(ch: str) -> str:
    """'L' letter, 'N' number, 'S' whitespace, 'P' anything else (punctuation, symbols, marks)."""
    if ch.isspace():
        return "S"
    cat = unicodedata.category(ch)[0]
    return cat if cat in ("L", "N") else "P"


def split_words(text: str) -> list[str]:
    """Pieces in CLIP's order of preference at each position: special tokens, contractions, a run of letters, one
    digit, a run of other non-space characters (whitespace separates and is dropped)."""
    out, i, n = [], 0, len(text)
    while i < n:
        rest = text[i:]
        special = next((s for s in (START, END) if rest.startswith(s)), None)
        if special is not None:
            out.append(special)
            i += len(special)
            continue
        contraction = next((c for c in CONTRACTIONS if rest[: len(c)].lower() == c), None)
        if contraction is not None:
            out.append(rest[: len(contraction)])
            i += len(contraction)
            continue
        kind = _kind(text[i])
        if kind == "S":
            i += 1
            continue
        j = i + 1
        if kind != "N":  # numbers are split digit by digit; letters and other runs continue while the kind holds
            while j < n and _kind(text[j]) == kind:
                j += 1
        out.append(text[i:j])
        i = j
    return out


def read_merges(path: str | Path, limit: int | None = CLIP_MERGES) -> list[tuple[str, str]]:
    """The first `limit` merge pairs of a (gzipped or plain) merges file; its first line is a version header."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsNotFoundError(
            f"CLIP vocabulary file not found: {path}; pass vocab=<local bpe_simple_vocab_16e6.txt.gz> (the merges "
            "file that ships with OpenAI CLIP / open_clip); normalcy never downloads it"
        )
    try:
        raw = path.read_bytes()
        raw = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
        lines = raw.decode("utf-8").split("\n")[1:]
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise WeightsMismatchError(f"{path} is not a CLIP merges file (gzip/utf-8 text expected): {exc}") from None
    pairs = []
    for number, line in enumerate(lines[: limit if limit is not None else len(lines)], start=2):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise WeightsMismatchError(f"{path} line {number}: a merge is two symbols separated by a space, got "
                                       f"{line[:60]!r}; is this a CLIP bpe_simple_vocab file?")
        pairs.append((parts[0], parts[1]))
    if not pairs:
        raise WeightsMismatchError(f"{path} holds no merges; is this a CLIP bpe_simple_vocab file?")
    return pairs


class ClipTokenizer:
    """Text → CLIP token ids (and back) from a merges file; `encode_batch` gives the model's padded input."""

    def __init__(self, merges: list[tuple[str, str]]) -> None:
        self.byte_symbols = byte_symbols()
        self.symbol_bytes = {s: b for b, s in self.byte_symbols.items()}
        symbols = list(self.byte_symbols.values())
        vocab = symbols + [s + END_OF_WORD for s in symbols] + ["".join(m) for m in merges] + [START, END]
        self.vocab = {tok: i for i, tok in enumerate(vocab)}
        self.tokens = vocab
        self.ranks = {m: r for r, m in enumerate(merges)}
        self.start_id, self.end_id = self.vocab[START], self.vocab[END]
        self._cache: dict[str, tuple[str, ...]] = {START: (START,), END: (END,)}

    @classmethod
    def from_file(cls, path: str | Path, vocab_size: int | None = None) -> ClipTokenizer:
        """Read a merges file; with `vocab_size` (the text tower's token_embedding rows) exactly the merges it needs."""
        if vocab_size is None:
            return cls(read_merges(path))
        need = int(vocab_size) - 2 * 256 - 2
        if need < 0:
            raise WeightsMismatchError(f"a CLIP vocabulary has at least 514 entries, the model has {vocab_size}")
        merges = read_merges(path, limit=need)
        if len(merges) != need:
            raise WeightsMismatchError(
                f"{path} has {len(merges)} merges, the model's vocabulary needs {need} ({vocab_size} token "
                "embeddings = 512 byte symbols + merges + 2 markers); pass the merges file of these weights"
            )
        return cls(merges)

    def __len__(self) -> int:
        return len(self.tokens)

    def bpe(self, word: str) -> tuple[str, ...]:
        """Merge one word's byte symbols, always the pair with the lowest rank first, until none applies."""
        if word in self._cache:
            return self._cache[word]
        parts = [*word[:-1], word[-1] + END_OF_WORD]
        while len(parts) > 1:
            pairs = {(a, b) for a, b in zip(parts, parts[1:])}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        out = tuple(parts)
        if len(self._cache) < 100_000:
            self._cache[word] = out
        return out

    def encode(self, text: str) -> list[int]:
        """Token ids of a text, without the start/end markers."""
        ids = []
        for piece in split_words(clean_text(text)):
            if piece in (START, END):
                ids.append(self.vocab[piece])
                continue
            word = "".join(self.byte_symbols[b] for b in piece.encode("utf-8"))
            ids.extend(self.vocab[s] for s in self.bpe(word))
        return ids

    def decode(self, ids: list[int]) -> str:
        """Text of token ids (markers dropped; word ends become spaces)."""
        text = "".join(self.tokens[i] for i in ids if i not in (self.start_id, self.end_id))
        words = text.split(END_OF_WORD)  # a word end is a space; inside words every symbol stands for one byte
        data = b" ".join(bytes(self.symbol_bytes[c] for c in w) for w in words)
        return data.decode("utf-8", errors="replace").strip()

    def encode_batch(self, texts: list[str], context_length: int) -> torch.Tensor:
        """N×context_length int64: start marker, ids, end marker, zero padding; too long texts are cut keeping the
        end marker last (the text tower reads its features at the end marker)."""
        out = torch.zeros((len(texts), int(context_length)), dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.start_id, *self.encode(text)][: int(context_length) - 1] + [self.end_id]
            out[row, : len(ids)] = torch.tensor(ids)
        return out


__all__ = ["ClipTokenizer", "read_merges", "split_words", "clean_text", "CLIP_MERGES"]
