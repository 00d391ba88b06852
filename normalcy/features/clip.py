"""CLIP image/text towers in plain torch, from OpenAI-CLIP-layout weights at a local path (never downloaded).

Accepted files: a state dict saved by torch (`.pt`/`.pth`/`.bin`, read with `weights_only=True`: tensors only, no
arbitrary objects are unpickled) or `.safetensors`, in the OpenAI CLIP key layout (`visual.conv1.weight`,
`visual.transformer.resblocks.N.attn.in_proj_weight`, `token_embedding.weight`, `text_projection`, ...; open_clip's
ViT checkpoints use the same names). Widths, layer counts, patch size, resolution, context length and vocabulary
size are read from the tensor shapes. Vision transformers only: ResNet CLIP variants (RN50, ...) are refused with a
clear error. TorchScript archives (the original OpenAI `.pt` downloads) are refused too, since loading them runs
their code; convert them once to a state dict (see docs/fewshot.md).

Head counts are not stored in the weights: they default to width / 64 (every OpenAI CLIP model); pass
`vision_heads`/`text_heads` for others (open_clip ViT-H/14: vision_heads=16). OpenAI models use QuickGELU;
open_clip models trained without it need `quick_gelu=False`.
"""

from __future__ import annotations

import math
import re
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from normalcy.errors import WeightsMismatchError, WeightsNotFoundError
from normalcy.features.backbones import file_sha256
from normalcy.features.clip_tokenizer import ClipTokenizer

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # the normalisation every CLIP image tower was trained with
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
REQUIRED = ("visual.conv1.weight", "visual.class_embedding", "visual.positional_embedding", "visual.ln_pre.weight",
            "visual.ln_post.weight", "visual.proj", "token_embedding.weight", "positional_embedding",
            "ln_final.weight", "text_projection", "logit_scale")
# scalars in OpenAI's TorchScript state dicts; the causal mask some open_clip versions saved as a buffer
IGNORED = ("input_resolution", "context_length", "vocab_size", "attn_mask")


@dataclass(frozen=True)
class ClipConfig:
    """The architecture of a CLIP ViT model, as read from its tensor shapes."""

    embed_dim: int
    vision_width: int
    vision_layers: int
    vision_heads: int
    patch_size: int
    grid: int  # patches per side at the native resolution
    text_width: int
    text_layers: int
    text_heads: int
    context_length: int
    vocab_size: int
    quick_gelu: bool = True

    @property
    def image_resolution(self) -> int:
        """Native input side in pixels (patch size × grid)."""
        return self.patch_size * self.grid


# --- reading files ----------------------------------------------------------------------------------------
def _is_torchscript(path: Path) -> bool:
    """True for a TorchScript archive (a zip with a code/ folder), which torch.load cannot read safely."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any("/code/" in n or n.endswith("constants.pkl") for n in zf.namelist())


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a local CLIP weights file (.pt/.pth/.bin/.ckpt state dict or .safetensors), never unpickling
    anything but tensors; a `state_dict` wrapper and a `module.` prefix (DDP checkpoints) are unwrapped."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsNotFoundError(
            f"CLIP weights not found: {path}; pass weights=<local .pt/.pth/.safetensors file in the OpenAI CLIP "
            "state-dict layout>; normalcy never downloads weights"
        )
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            sd = load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises several types for truncated/garbage files
            raise WeightsMismatchError(f"{path} is not a readable safetensors file: {exc}") from None
    elif suffix in TORCH_SUFFIXES:
        if _is_torchscript(path):
            raise WeightsMismatchError(
                f"{path} is a TorchScript archive (the original OpenAI CLIP download); loading it would run its "
                "code. Convert it once, where you trust the file, with `torch.save(torch.jit.load(PATH, "
                "map_location='cpu').state_dict(), 'clip_state.pt')`, and pass that file"
            )
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # UnpicklingError for non-tensor objects, RuntimeError/EOFError for damage
            raise WeightsMismatchError(
                f"{path} cannot be read as a plain state dict (weights_only=True; objects other than tensors are "
                f"never unpickled): {type(exc).__name__}: {str(exc)[:200]}"
            ) from None
    else:
        raise WeightsMismatchError(f"{path}: unknown weights format {suffix!r}; expected .safetensors or "
                                   f"{'/'.join(TORCH_SUFFIXES)} (a torch state dict)")
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsMismatchError(f"{path} does not hold a flat name → tensor state dict")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return {k: v for k, v in sd.items() if k not in IGNORED}


def _count_blocks(sd: dict[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"resblocks\.(\d+)\.attn\.in_proj_weight$")
    found = sorted(int(m.group(1)) for k in sd if (m := pattern.match(k)))
    if found != list(range(len(found))):
        raise WeightsMismatchError(f"{prefix}resblocks are not numbered 0..N-1 (found {found[:8]}...)")
    return len(found)


def _heads(width: int, heads: int | None, what: str) -> int:
    h = max(1, width // 64) if heads is None else int(heads)
    if h < 1 or width % h:
        raise WeightsMismatchError(f"{what} width {width} is not divisible into {h} attention heads; pass "
                                   f"{what}_heads=<a divisor of {width}>")
    return h


def clip_config(sd: dict[str, torch.Tensor], vision_heads: int | None = None, text_heads: int | None = None,
                quick_gelu: bool = True, source: str = "the weights") -> ClipConfig:
    """The architecture implied by a state dict's shapes; WeightsMismatchError when it is not a CLIP ViT."""
    if "visual.attnpool.c_proj.weight" in sd or any(k.startswith("visual.layer1.") for k in sd):
        raise WeightsMismatchError(f"{source} is a ResNet CLIP (RN50/RN101/RN50x4...): only the vision-transformer "
                                   "CLIP models (ViT-B/32, ViT-B/16, ViT-L/14, ...) are supported")
    if any(k.startswith(("vision_model.", "text_model.")) for k in sd):
        raise WeightsMismatchError(f"{source} uses the Hugging Face transformers CLIP layout (vision_model.*); "
                                   "normalcy reads the OpenAI/open_clip layout (visual.conv1.weight, ...)")
    missing = [k for k in REQUIRED if k not in sd]
    if missing:
        raise WeightsMismatchError(f"{source} is not an OpenAI-layout CLIP ViT state dict: missing {missing[:5]} "
                                   f"({len(sd)} tensors, e.g. {sorted(sd)[:3]})")
    conv = sd["visual.conv1.weight"]
    if conv.ndim != 4 or conv.shape[1] != 3 or conv.shape[2] != conv.shape[3]:
        raise WeightsMismatchError(f"{source}: visual.conv1.weight has shape {tuple(conv.shape)}, expected "
                                   "(width, 3, patch, patch)")
    width, patch = int(conv.shape[0]), int(conv.shape[2])
    n_pos = int(sd["visual.positional_embedding"].shape[0])
    grid = int(round(math.sqrt(n_pos - 1)))
    pos_shape = tuple(sd["visual.positional_embedding"].shape)
    if len(pos_shape) != 2 or grid * grid + 1 != n_pos or pos_shape[1] != width:
        raise WeightsMismatchError(f"{source}: visual.positional_embedding {pos_shape} is not (grid²+1, {width})")
    text_width = int(sd["ln_final.weight"].shape[0])
    embed_dim = int(sd["text_projection"].shape[1])
    if tuple(sd["visual.proj"].shape) != (width, embed_dim) or sd["text_projection"].shape[0] != text_width:
        raise WeightsMismatchError(f"{source}: visual.proj {tuple(sd['visual.proj'].shape)} and text_projection "
                                   f"{tuple(sd['text_projection'].shape)} do not map both towers to one embedding")
    return ClipConfig(
        embed_dim=embed_dim, vision_width=width, vision_layers=_count_blocks(sd, "visual.transformer."),
        vision_heads=_heads(width, vision_heads, "vision"), patch_size=patch, grid=grid, text_width=text_width,
        text_layers=_count_blocks(sd, "transformer."), text_heads=_heads(text_width, text_heads, "text"),
        context_length=int(sd["positional_embedding"].shape[0]), vocab_size=int(sd["token_embedding.weight"].shape[0]),
        quick_gelu=bool(quick_gelu),
    )


# --- modules (parameter names follow the OpenAI layout, so state dicts load strictly) -----------------------
class QuickGELU(nn.Module):
    """x·sigmoid(1.702x), the GELU approximation the OpenAI CLIP models were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class Attention(nn.Module):
    """Multi-head self-attention with nn.MultiheadAttention's packed parameters, plus value-value attention."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width))
        self.out_proj = nn.Linear(width, width)

    def _split(self, y: torch.Tensor) -> torch.Tensor:
        b, t, w = y.shape
        return y.view(b, t, self.heads, w // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, t, w = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        ctx = F.scaled_dot_product_attention(self._split(q), self._split(k), self._split(v), attn_mask=mask)
        return self.out_proj(ctx.transpose(1, 2).reshape(b, t, w))

    def value_attention(self, x: torch.Tensor) -> torch.Tensor:
        """Self-attention of the values with themselves (v·vᵀ): each token attends to tokens like itself, which
        keeps patch tokens local (CLIP Surgery's v-v attention, AnomalyCLIP's DPAM)."""
        b, t, w = x.shape
        v = self._split(F.linear(x, self.in_proj_weight[2 * w :], self.in_proj_bias[2 * w :]))
        ctx = F.scaled_dot_product_attention(v, v, v)
        return self.out_proj(ctx.transpose(1, 2).reshape(b, t, w))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln_1 x), then x + mlp(ln_2 x)."""

    def __init__(self, width: int, heads: int, quick_gelu: bool) -> None:
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.mlp = nn.Sequential(OrderedDict(c_fc=nn.Linear(width, 4 * width),
                                             gelu=QuickGELU() if quick_gelu else nn.GELU(),
                                             c_proj=nn.Linear(4 * width, width)))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), mask)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of blocks under the name `resblocks` (the OpenAI layout)."""

    def __init__(self, width: int, layers: int, heads: int, quick_gelu: bool) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(Block(width, heads, quick_gelu) for _ in range(layers))


class VisionTower(nn.Module):
    """ViT image tower: patches → class token + positions → blocks → ln_post → proj."""

    def __init__(self, cfg: ClipConfig) -> None:
        super().__init__()
        w, p = cfg.vision_width, cfg.patch_size
        self.patch_size = p
        self.conv1 = nn.Conv2d(3, w, kernel_size=p, stride=p, bias=False)
        self.class_embedding = nn.Parameter(torch.empty(w))
        self.positional_embedding = nn.Parameter(torch.empty(cfg.grid**2 + 1, w))
        self.ln_pre = nn.LayerNorm(w)
        self.transformer = Transformer(w, cfg.vision_layers, cfg.vision_heads, cfg.quick_gelu)
        self.ln_post = nn.LayerNorm(w)
        self.proj = nn.Parameter(torch.empty(w, cfg.embed_dim))

    def positions(self, h: int, w: int) -> torch.Tensor:
        """Positional embeddings for an h×w patch grid (bicubic interpolation away from the native grid)."""
        pos = self.positional_embedding
        g = int(round(math.sqrt(pos.shape[0] - 1)))
        if (h, w) == (g, g):
            return pos
        grid = pos[1:].T.reshape(1, -1, g, g)
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
        return torch.cat([pos[:1], grid.reshape(pos.shape[1], h * w).T])

    def forward(self, x: torch.Tensor, dense_layers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised B×3×H×W → (B×E image embeddings, B×E×h×w patch embeddings).

        With `dense_layers` = n > 0 the patch embeddings come from a second stream that, in each of the last n
        blocks, adds v-v attention of that block's input and skips the MLP; the image embedding is CLIP's own.
        """
        x = self.conv1(x)
        b, _, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(b, 1, -1)
        x = self.ln_pre(torch.cat([cls, x], dim=1) + self.positions(h, w).to(x.dtype))
        blocks = self.transformer.resblocks
        start = len(blocks) - max(0, min(int(dense_layers), len(blocks)))
        dense = None
        for i, block in enumerate(blocks):
            if i >= start:
                dense = (x if dense is None else dense) + block.attn.value_attention(block.ln_1(x))
            x = block(x)
        tokens = self.ln_post(x if dense is None else dense)
        image = self.ln_post(x[:, 0]) @ self.proj
        patches = tokens[:, 1:] @ self.proj
        return image, patches.transpose(1, 2).reshape(b, -1, h, w)


class ClipModel(nn.Module):
    """Both CLIP towers; attribute names match the OpenAI state-dict keys (text tower at the top level)."""

    def __init__(self, cfg: ClipConfig) -> None:
        super().__init__()
        self.config = cfg
        self.visual = VisionTower(cfg)
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.text_width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.text_width))
        self.transformer = Transformer(cfg.text_width, cfg.text_layers, cfg.text_heads, cfg.quick_gelu)
        self.ln_final = nn.LayerNorm(cfg.text_width)
        self.text_projection = nn.Parameter(torch.empty(cfg.text_width, cfg.embed_dim))
        self.logit_scale = nn.Parameter(torch.empty(()))
        self.weights_sha256 = ""
        self.tokenizer: ClipTokenizer | None = None

    @property
    def backbone_sha256(self) -> str:
        """The weights file's hash under the name model files record for backbones (normalcy.store)."""
        return self.weights_sha256

    def encode_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """N×context token ids → N×E text embeddings, read at each sequence's end marker (its highest id).

        The padding after the longest sequence's end marker is dropped first: with causal attention no position
        sees later ones, so the result is the same and short prompts cost a fraction of the full context."""
        ends = ids.argmax(dim=-1)
        ids = ids[:, : int(ends.max()) + 1] if ids.numel() else ids
        n, t = ids.shape
        x = self.token_embedding(ids) + self.positional_embedding[:t]
        causal = torch.full((t, t), float("-inf")).triu_(1).to(x.dtype)
        for block in self.transformer.resblocks:
            x = block(x, causal)
        x = self.ln_final(x)
        return x[torch.arange(n), ends] @ self.text_projection

    def encode_text(self, texts: list[str], tokenizer: ClipTokenizer | None = None, batch_size: int = 64
                    ) -> torch.Tensor:
        """Unit-length N×E embeddings of texts, with `tokenizer` or the one loaded with load_clip(..., vocab=PATH)."""
        tokenizer = tokenizer or self.tokenizer
        if tokenizer is None:
            raise WeightsNotFoundError("encoding text needs CLIP's merges file: load_clip(weights, vocab=<local "
                                       "bpe_simple_vocab_16e6.txt.gz>)")
        ids = tokenizer.encode_batch(list(texts), self.config.context_length)
        with torch.inference_mode():
            out = torch.cat([self.encode_tokens(ids[i : i + batch_size]) for i in range(0, len(ids), batch_size)])
        return F.normalize(out.float(), dim=-1)

    @staticmethod
    def normalize_pixels(x: torch.Tensor) -> torch.Tensor:
        """B×3×H×W in [0, 1] → CLIP's input normalisation."""
        mean = torch.tensor(CLIP_MEAN, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, dtype=x.dtype).view(1, 3, 1, 1)
        return (x - mean) / std

    def encode_image(self, x: torch.Tensor, dense_layers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """B×3×H×W in [0, 1] → unit-length (B×E image, B×E×h×w patch) embeddings."""
        with torch.inference_mode():
            image, patches = self.visual(self.normalize_pixels(x), dense_layers)
        return F.normalize(image.float(), dim=-1), F.normalize(patches.float(), dim=1)


def load_clip(weights: str | Path, vocab: str | Path | None = None, vision_heads: int | None = None,
              text_heads: int | None = None, quick_gelu: bool = True) -> ClipModel:
    """A CLIP ViT model (eval, frozen) from local weights, with its tokenizer when `vocab` (merges file) is given."""
    path = Path(weights).expanduser()
    sd = read_state_dict(path)
    cfg = clip_config(sd, vision_heads, text_heads, quick_gelu, source=str(path))
    model = ClipModel(cfg)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise WeightsMismatchError(f"{path} does not fit a CLIP ViT of the shape its tensors imply: "
                                   f"{str(exc)[:400]}") from None
    model.weights_sha256 = file_sha256(path)
    if vocab is not None:
        model.tokenizer = ClipTokenizer.from_file(vocab, vocab_size=cfg.vocab_size)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


__all__ = ["ClipConfig", "ClipModel", "clip_config", "load_clip", "read_state_dict", "CLIP_MEAN", "CLIP_STD"]
