"""Heat-map overlays and mask images for people to look at (no matplotlib needed)."""

from __future__ import annotations

import numpy as np
from PIL import Image

# anchor colours of a perceptually ordered "inferno"-like ramp: black → purple → red → orange → pale yellow
_ANCHORS = np.array(
    [[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21], [250, 193, 39],
     [252, 255, 164]], dtype=np.float32,
)
_LUT = np.stack(
    [np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, len(_ANCHORS)), _ANCHORS[:, c]) for c in range(3)], axis=1
).astype(np.uint8)


def colorize(amap: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """Map values to RGB uint8 through the colour ramp, clipped to [vmin, vmax]."""
    span = max(vmax - vmin, 1e-12)
    idx = np.clip((amap - vmin) / span * 255.0, 0, 255).astype(np.uint8)
    return _LUT[idx]


def overlay(
    image: np.ndarray, amap: np.ndarray, vmin: float, vmax: float, opacity: float = 0.5,
    mask: np.ndarray | None = None,
) -> Image.Image:
    """Blend the coloured map over the image; outline the defect mask in cyan when given."""
    heat = colorize(amap, vmin, vmax).astype(np.float32)
    weight = opacity * np.clip((amap - vmin) / max(vmax - vmin, 1e-12), 0.15, 1.0)[..., None]
    out = image.astype(np.float32) * (1 - weight) + heat * weight
    if mask is not None and mask.any():
        edge = mask & ~_eroded(mask)
        out[edge] = (0, 255, 255)
    return Image.fromarray(out.clip(0, 255).astype(np.uint8))


def _eroded(mask: np.ndarray) -> np.ndarray:
    m = np.pad(mask, 1, constant_values=False)
    return m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]


def display_range(calibration) -> tuple[float, float]:
    """A fixed colour scale per model from normal pixels: median normal pixel → twice the 1e-4 tail."""
    if calibration is None or calibration.pixel_quantiles is None:
        return 0.0, 1.0
    lo = calibration.pixel_threshold(0.5)
    hi = calibration.pixel_threshold(1e-4)
    return lo, lo + 2.0 * max(hi - lo, 1e-9)


def mask_image(mask: np.ndarray) -> Image.Image:
    """A 0/255 single-channel PNG-ready mask."""
    return Image.fromarray(mask.astype(np.uint8) * 255)
