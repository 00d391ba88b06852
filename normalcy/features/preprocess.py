"""Turn images of any size into one square batch, and anomaly maps back into each image's own frame."""

from __future__ import annotations

import functools
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


Canvas = int | tuple[int, int]  # a square side, or (height, width)


def canvas_hw(size: Canvas) -> tuple[int, int]:
    """(height, width) of the network canvas: an int means a square."""
    if isinstance(size, (tuple, list)):
        h, w = (int(v) for v in size)
    else:
        h = w = int(size)
    if h < 1 or w < 1:
        raise ParameterError(f"the network canvas must have positive sides, got {size!r}")
    return h, w


def aspect_canvas(aspect: float, size: int, multiple: int = 32) -> tuple[int, int]:
    """The (height, width) canvas of about size² pixels with height/width ≈ `aspect`, sides multiples of `multiple`.

    Fitting every image to the typical aspect of its dataset keeps thin structures in proportion (a 640×250 part
    squashed to 256×256 shrinks 2.5× along one axis only) at the cost of a square canvas of the same area.
    """
    if not aspect > 0:
        raise ParameterError(f"aspect ratio must be > 0, got {aspect}")
    side = lambda v: max(multiple, int(round(v / multiple)) * multiple)  # noqa: E731
    return side(size * aspect**0.5), side(size / aspect**0.5)


def placement_for(height: int, width: int, size: Canvas, mode: str) -> Placement:
    """Stretch fills the canvas; pad keeps the aspect ratio and centres the image (edges replicated)."""
    ch, cw = canvas_hw(size)
    if mode == "stretch":
        return Placement(height, width, 0, 0, ch, cw)
    if mode == "pad":
        scale = min(ch / height, cw / width)
        ih, iw = max(1, min(ch, round(height * scale))), max(1, min(cw, round(width * scale)))
        return Placement(height, width, (ch - ih) // 2, (cw - iw) // 2, ih, iw)
    raise ParameterError(f"resize_mode must be one of {RESIZE_MODES}, got {mode!r}")


def prepare_batch(images: Sequence[np.ndarray], size: Canvas, mode: str = "stretch") -> tuple[torch.Tensor, list]:
    """H×W×3 uint8 arrays → B×3×h×w float tensor in [0, 1] on the canvas `size`, plus each image's Placement."""
    ch, cw = canvas_hw(size)
    out = torch.empty((len(images), 3, ch, cw), dtype=torch.float32)
    placements = []
    for i, img in enumerate(images):
        h, w = img.shape[:2]
        pl = placement_for(h, w, (ch, cw), mode)
        if is_grey(img):  # grey stored as RGB (read_image repeats L): work on one plane, the same values
            img = np.ascontiguousarray(img[:, :, 0])
        if (h, w) != (pl.inner_h, pl.inner_w):  # PIL's antialiased bilinear resize on uint8 is fast and exact
            img = np.array(Image.fromarray(img).resize((pl.inner_w, pl.inner_h), Image.Resampling.BILINEAR))
        if not img.flags.writeable:
            img = img.copy()
        t = torch.from_numpy(np.ascontiguousarray(img))
        t = (t[None] if t.ndim == 2 else t.permute(2, 0, 1))[None].float().div_(255.0)
        if mode == "pad":
            pads = (pl.left, cw - pl.left - pl.inner_w, pl.top, ch - pl.top - pl.inner_h)
            t = F.pad(t, pads, mode="replicate")
        out[i] = t[0].clamp_(0.0, 1.0)  # one plane broadcasts to the three channels
        placements.append(pl)
    return out, placements


def is_grey(img: np.ndarray) -> bool:
    """True for an H×W×3 array whose three channels are equal (a grey image read as RGB)."""
    if img.ndim != 3 or img.shape[2] != 3:
        return False
    first = img[:, :, 0]
    return bool(np.array_equal(first, img[:, :, 1]) and np.array_equal(first, img[:, :, 2]))


def valid_grid(placements: Sequence[Placement], size: Canvas, grid: tuple[int, int]) -> torch.Tensor:
    """B×h×w bool: which feature cells have their centre on the image (not on padding)."""
    ch, cw = canvas_hw(size)
    gh, gw = grid
    ys = (torch.arange(gh, dtype=torch.float32) + 0.5) * (ch / gh)
    xs = (torch.arange(gw, dtype=torch.float32) + 0.5) * (cw / gw)
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


@functools.lru_cache(maxsize=32)
def _canvas_operator(grid: int, canvas: int, sigma: float) -> torch.Tensor:
    """The unit vectors of a `grid`-cell axis upsampled to the canvas and blurred: grid×1×canvas (the part of
    `axis_operator` that does not depend on the image's size, so images of many sizes share it)."""
    x = torch.eye(grid)[:, None, :]  # the unit vectors as `grid` one-channel signals
    x = F.interpolate(x, size=canvas, mode="linear", align_corners=False)
    if sigma > 0:
        k = gaussian_kernel1d(sigma)
        r = (k.numel() - 1) // 2
        x = F.conv1d(F.pad(x, (r, r), mode="reflect"), k.view(1, 1, -1))
    return x


@functools.lru_cache(maxsize=256)
def axis_operator(grid: int, canvas: int, start: int, inner: int, out: int, sigma: float) -> torch.Tensor:
    """One axis of `restore_maps` as an out×grid matrix: bilinear upsampling to the canvas, Gaussian blur (reflect
    padding), crop to the image's part of the canvas, bilinear resize to its own size.

    Every step is linear and acts on each axis separately, so running them on the grid's unit vectors gives the
    matrix; a map is then restored by two small matrix products (cached per size), not by blurring a canvas.
    """
    x = _canvas_operator(grid, canvas, sigma)[..., start : start + inner]
    if inner != out:
        x = F.interpolate(x, size=out, mode="linear", align_corners=False)
    return x[:, 0, :].T.contiguous()


def restore_maps(
    maps: torch.Tensor, placements: Sequence[Placement], size: Canvas, sigma: float = 4.0
) -> list[np.ndarray]:
    """Feature-grid maps (B×h×w) → smoothed maps at each image's own size (float32 H×W arrays).

    Same result as upsampling to the canvas, blurring, cropping and resizing (to float rounding), computed as
    rows @ map @ columns with the per-axis operators of `axis_operator`.
    """
    ch, cw = canvas_hw(size)
    gh, gw = (int(v) for v in maps.shape[-2:])
    out = []
    with torch.inference_mode():
        for m, pl in zip(maps.float(), placements):
            rows = axis_operator(gh, ch, pl.top, pl.inner_h, pl.height, float(sigma))
            cols = axis_operator(gw, cw, pl.left, pl.inner_w, pl.width, float(sigma))
            out.append((rows @ m @ cols.T).numpy())
    return out
