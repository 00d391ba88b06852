"""PNG pictures of one prediction as base64 data URLs: blended overlay, transparent heat map, defect mask."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from normalcy.explain.overlay import colorize, mask_image, overlay

MIN_HEAT_ALPHA = 0.15  # faint tint even on normal pixels, so the map's extent stays visible


def data_url(img: Image.Image) -> str:
    """Encode a PIL image as a `data:image/png;base64,...` URL (stateless: nothing is stored server-side)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=3)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def preview_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """(height, width) scaled down so the longest side is at most `max_side` (never scaled up)."""
    scale = min(1.0, max_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def _resized(image: np.ndarray, amap: np.ndarray, mask: np.ndarray | None, size: tuple[int, int]):
    """Image, map and mask at preview size (bilinear for pixels and map, nearest for the mask)."""
    h, w = size
    if image.shape[:2] == (h, w):
        return image, amap, mask
    img = np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR))
    amp = Image.fromarray(np.ascontiguousarray(amap, dtype=np.float32))
    amp = np.asarray(amp.resize((w, h), Image.Resampling.BILINEAR))
    msk = None
    if mask is not None:
        msk = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((w, h), Image.Resampling.NEAREST)) > 0
    return img, amp, msk


def heatmap_rgba(amap: np.ndarray, vmin: float, vmax: float) -> Image.Image:
    """The coloured map with per-pixel alpha rising with the score, for layering over the original image."""
    rgb = colorize(amap, vmin, vmax)
    weight = np.clip((amap - vmin) / max(vmax - vmin, 1e-12), MIN_HEAT_ALPHA, 1.0)
    alpha = (weight * 255).astype(np.uint8)
    return Image.fromarray(np.dstack([rgb, alpha]))


def render_pictures(
    image: np.ndarray, amap: np.ndarray, mask: np.ndarray | None, vmin: float, vmax: float, max_side: int
) -> dict[str, str]:
    """Data URLs for `overlay` (as `normalcy predict` writes it), `heatmap` (RGBA) and `mask` (full size)."""
    size = preview_size(*image.shape[:2], max_side)
    img, amp, msk = _resized(image, amap, mask, size)
    out = {
        "overlay": data_url(overlay(img, amp, vmin, vmax, opacity=0.5, mask=msk)),
        "heatmap": data_url(heatmap_rgba(amp, vmin, vmax)),
    }
    full_mask = mask if mask is not None else np.zeros(image.shape[:2], dtype=bool)
    out["mask"] = data_url(mask_image(full_mask).convert("1"))
    return out
