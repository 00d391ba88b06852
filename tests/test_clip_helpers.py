"""Tiny CLIP fixtures for the clip tests: a random OpenAI-layout state dict, a merges file, an independent forward."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# merge rank → pair; "object" merges all the way to one token, "lower" stops at lo + w + er</w>
MERGES = [("l", "o"), ("lo", "w</w>"), ("e", "r</w>"), ("o", "b"), ("ob", "j"), ("e", "c"), ("ec", "t</w>"),
          ("obj", "ect</w>")]
VOCAB_SIZE = 512 + len(MERGES) + 2
TINY = {"width": 32, "layers": 2, "patch": 8, "resolution": 32, "context": 16, "embed": 24, "text_width": 32,
        "text_layers": 2}
HEADS = 2


def write_merges(path: Path, merges: list[tuple[str, str]] = MERGES, gz: bool = True) -> Path:
    """A merges file in CLIP's format: a version line, then one "a b" pair per line."""
    text = "#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n"
    path.write_bytes(gzip.compress(text.encode()) if gz else text.encode())
    return path


def _block(sd: dict, prefix: str, w: int, g: torch.Generator) -> None:
    def rnd(*shape: int, scale: float = 0.15) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    sd[prefix + "ln_1.weight"], sd[prefix + "ln_1.bias"] = 1 + rnd(w, scale=0.1), rnd(w, scale=0.1)
    sd[prefix + "attn.in_proj_weight"], sd[prefix + "attn.in_proj_bias"] = rnd(3 * w, w), rnd(3 * w)
    sd[prefix + "attn.out_proj.weight"], sd[prefix + "attn.out_proj.bias"] = rnd(w, w), rnd(w)
    sd[prefix + "ln_2.weight"], sd[prefix + "ln_2.bias"] = 1 + rnd(w, scale=0.1), rnd(w, scale=0.1)
    sd[prefix + "mlp.c_fc.weight"], sd[prefix + "mlp.c_fc.bias"] = rnd(4 * w, w), rnd(4 * w)
    sd[prefix + "mlp.c_proj.weight"], sd[prefix + "mlp.c_proj.bias"] = rnd(w, 4 * w), rnd(w)


def tiny_state_dict(seed: int = 0, vocab_size: int = VOCAB_SIZE, **overrides: int) -> dict[str, torch.Tensor]:
    """A randomly initialised CLIP ViT state dict in the OpenAI key layout, built tensor by tensor."""
    c = {**TINY, **overrides}
    g = torch.Generator().manual_seed(seed)
    w, tw, e, p = c["width"], c["text_width"], c["embed"], c["patch"]
    grid = c["resolution"] // p
    sd: dict[str, torch.Tensor] = {
        "visual.conv1.weight": torch.randn(w, 3, p, p, generator=g) * 0.1,
        "visual.class_embedding": torch.randn(w, generator=g) * 0.2,
        "visual.positional_embedding": torch.randn(grid * grid + 1, w, generator=g) * 0.2,
        "visual.ln_pre.weight": 1 + torch.randn(w, generator=g) * 0.1, "visual.ln_pre.bias": torch.zeros(w),
        "visual.ln_post.weight": torch.ones(w), "visual.ln_post.bias": torch.randn(w, generator=g) * 0.1,
        "visual.proj": torch.randn(w, e, generator=g) / math.sqrt(w),
        "token_embedding.weight": torch.randn(vocab_size, tw, generator=g) * 0.2,
        "positional_embedding": torch.randn(c["context"], tw, generator=g) * 0.1,
        "ln_final.weight": torch.ones(tw), "ln_final.bias": torch.zeros(tw),
        "text_projection": torch.randn(tw, e, generator=g) / math.sqrt(tw),
        "logit_scale": torch.tensor(math.log(1 / 0.07)),
    }
    for i in range(c["layers"]):
        _block(sd, f"visual.transformer.resblocks.{i}.", w, g)
    for i in range(c["text_layers"]):
        _block(sd, f"transformer.resblocks.{i}.", tw, g)
    return sd


# --- an independent reference forward: torch.nn.MultiheadAttention and functional ops on the raw tensors ------------
def _mha(sd: dict, prefix: str, w: int, heads: int) -> nn.MultiheadAttention:
    mha = nn.MultiheadAttention(w, heads, batch_first=True)
    mha.load_state_dict({k: sd[prefix + "attn." + k] for k in
                         ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias")})
    return mha.eval()


def _ln(sd: dict, name: str, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], sd[name + ".weight"], sd[name + ".bias"])


def _mlp(sd: dict, prefix: str, x: torch.Tensor) -> torch.Tensor:
    h = F.linear(x, sd[prefix + "mlp.c_fc.weight"], sd[prefix + "mlp.c_fc.bias"])
    h = h * torch.sigmoid(1.702 * h)
    return F.linear(h, sd[prefix + "mlp.c_proj.weight"], sd[prefix + "mlp.c_proj.bias"])


def _vv(sd: dict, prefix: str, x: torch.Tensor, heads: int) -> torch.Tensor:
    """Value-value attention written out head by head."""
    w = x.shape[-1]
    v = F.linear(x, sd[prefix + "attn.in_proj_weight"][2 * w :], sd[prefix + "attn.in_proj_bias"][2 * w :])
    d = w // heads
    outs = []
    for h in range(heads):
        vh = v[..., h * d : (h + 1) * d]
        outs.append(torch.softmax(vh @ vh.transpose(-1, -2) / math.sqrt(d), dim=-1) @ vh)
    return F.linear(torch.cat(outs, -1), sd[prefix + "attn.out_proj.weight"], sd[prefix + "attn.out_proj.bias"])


@torch.no_grad()
def reference_image(sd: dict, x: torch.Tensor, heads: int = HEADS, dense_layers: int = 0
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(B×E image embeddings, B×N×E patch embeddings) of CLIP-normalised images, unnormalised."""
    w = sd["visual.conv1.weight"].shape[0]
    p = sd["visual.conv1.weight"].shape[-1]
    t = F.conv2d(x, sd["visual.conv1.weight"], stride=p).flatten(2).transpose(1, 2)
    cls = sd["visual.class_embedding"].expand(t.shape[0], 1, w)
    t = _ln(sd, "visual.ln_pre", torch.cat([cls, t], 1) + sd["visual.positional_embedding"])
    n = sum(1 for k in sd if k.startswith("visual.transformer.") and k.endswith("attn.in_proj_weight"))
    dense = None
    for i in range(n):
        pre = f"visual.transformer.resblocks.{i}."
        y = _ln(sd, pre + "ln_1", t)
        if i >= n - dense_layers:
            dense = (t if dense is None else dense) + _vv(sd, pre, y, heads)
        t = t + _mha(sd, pre, w, heads)(y, y, y, need_weights=False)[0]
        t = t + _mlp(sd, pre, _ln(sd, pre + "ln_2", t))
    image = _ln(sd, "visual.ln_post", t[:, 0]) @ sd["visual.proj"]
    patches = _ln(sd, "visual.ln_post", (t if dense is None else dense)[:, 1:]) @ sd["visual.proj"]
    return image, patches


@torch.no_grad()
def reference_text(sd: dict, ids: torch.Tensor, heads: int = HEADS) -> torch.Tensor:
    """N×E text embeddings at each sequence's highest token id (the end marker)."""
    w = sd["ln_final.weight"].shape[0]
    t = F.embedding(ids, sd["token_embedding.weight"]) + sd["positional_embedding"][: ids.shape[1]]
    causal = torch.ones(ids.shape[1], ids.shape[1], dtype=torch.bool).triu(1)  # True = may not attend
    n = sum(1 for k in sd if k.startswith("transformer.") and k.endswith("attn.in_proj_weight"))
    for i in range(n):
        pre = f"transformer.resblocks.{i}."
        y = _ln(sd, pre + "ln_1", t)
        t = t + _mha(sd, pre, w, heads)(y, y, y, attn_mask=causal, need_weights=False)[0]
        t = t + _mlp(sd, pre, _ln(sd, pre + "ln_2", t))
    t = _ln(sd, "ln_final", t)
    return t[torch.arange(ids.shape[0]), ids.argmax(-1)] @ sd["text_projection"]


def save_tiny(folder: Path, seed: int = 0) -> tuple[dict[str, torch.Tensor], Path, Path, Path]:
    """The state dict, saved as .pt and .safetensors, and a matching merges file."""
    from safetensors.torch import save_file

    sd = tiny_state_dict(seed)
    pt, st = folder / "tiny_clip.pt", folder / "tiny_clip.safetensors"
    torch.save(sd, pt)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(st))
    return sd, pt, st, write_merges(folder / "bpe_tiny.txt.gz")
