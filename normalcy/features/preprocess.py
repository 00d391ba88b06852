"""Turn images of any size into one square batch, and anomaly maps back into each image's own frame."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from normalcy.errors import ParameterError

RESIZE_MODES = ("stretch", "pad")


@dataclass(frozen=True)
class Placement:
    """Where an image of size (height, width) sits inside the square network canvas."""

    height: int
    width: int
    top: int
    left: int
    inner_h: int
    inner_w: int


def placement_for(height: int, width: int, size: int, mode: str) -> Placement:
    """Stretch fills the canvas; pad keeps the aspect ratio and centres the image (edges replicated)."""
    if mode == "stretch":
        return Placement(height, width, 0, 0, size, size)
    if mode == "pad":
        scale = size / max(height, width)
        ih, iw = max(1, round(height * scale)), max(1, round(width * scale))
        return Placement(height, width, (size - ih) // 2, (size - iw) // 2, ih, iw)
    raise ParameterError(f"resize_mode must be one of {RESIZE_MODES}, got {mode!r}")


def prepare_batch(images: Sequence[np.ndarray], size: int, mode: str = "stretch") -> tuple[torch.Tensor, list]:
    """H×W×3 uint8 arrays → B×3×size×size float tensor in [0, 1] plus each image's Placement."""
    out = torch.empty((len(images), 3, size, size), dtype=torch.float32)
    placements = []
    for i, img in enumerate(images):
        h, w = img.shape[:2]
        pl = placement_for(h, w, size, mode)
        if (h, w) != (pl.inner_h, pl.inner_w):  # PIL's antialiased bilinear resize on uint8 is fast and exact
            img = np.array(Image.fromarray(img).resize((pl.inner_w, pl.inner_h), Image.Resampling.BILINEAR))
        if not img.flags.writeable:
            img = img.copy()
        t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float().div_(255.0)
        if mode == "pad":
            pads = (pl.left, size - pl.left - pl.inner_w, pl.top, size - pl.top - pl.inner_h)
            t = F.pad(t, pads, mode="replicate")
        out[i] = t[0].clamp_(0.0, 1.0)
        placements.append(pl)
    return out, placements


def valid_grid(placements: Sequence[Placement], size: int, grid: tuple[int, int]) -> torch.Tensor:
    """B×h×w bool: which feature cells have their centre on the image (not on padding)."""
    gh, gw = grid
    ys = (torch.arange(gh, dtype=torch.float32) + 0.5) * (size / gh)
    xs = (torch.arange(gw, dtype=torch.float32) + 0.5) * (size / gw)
    masks = []
    for pl in placements:
        my = (ys >= pl.top) & (ys < pl.top + pl.inner_h)
        mx = (xs >= pl.left) & (xs < pl.left + pl.inner_w)
        masks.append(my[:, None] & mx[None, :])
    return torch.stack(masks)


def gaussian_kernel1d(sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian kernel truncated at 4 sigma."""
    radius = max(1, math.ceil(4 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian smoothing of B×H×W maps (reflect padding)."""
    if sigma <= 0:
        return maps
    k = gaussian_kernel1d(sigma).to(maps.dtype)
    r = (k.numel() - 1) // 2
    x = maps[:, None]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))
    return x[:, 0]


def restore_maps(
    maps: torch.Tensor, placements: Sequence[Placement], size: int, sigma: float = 4.0
) -> list[np.ndarray]:
    """Feature-grid maps (B×h×w) → smoothed maps at each image's own size (float32 H×W arrays)."""
    up = F.interpolate(maps[:, None].float(), size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    up = gaussian_blur(up, sigma)
    out = []
    for m, pl in zip(up, placements):
        inner = m[pl.top : pl.top + pl.inner_h, pl.left : pl.left + pl.inner_w]
        if (pl.inner_h, pl.inner_w) != (pl.height, pl.width):
            inner = F.interpolate(inner[None, None], size=(pl.height, pl.width), mode="bilinear",
                                  align_corners=False)[0, 0]
        out.append(inner.contiguous().numpy().astype(np.float32, copy=False))
    return out
