"""Global intensity robustness: brightness/contrast-jittered copies of the normal fit images.

Scores that follow a global gain (a lamp ageing, another camera exposure) are a nuisance, not an anomaly. Adding
copies of the fit images under a few fixed global gains and gammas to the memory bank and the position Gaussians
makes those shifts look normal. Measured in `benchmarks/robustness_image.py` (docs/design.md, "Nuisance brightness
and sub-populations").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from normalcy.detectors.image.lazy_items import TransformedItems

JITTER = (("gain", 0.8), ("gain", 1.2))  # fixed, so a fit is reproducible and costs a known factor (here 3×)


def intensity_shift(image: np.ndarray, kind: str, value: float) -> np.ndarray:
    """A uint8 image under a global gain (×value) or gamma (^value), clipped to 0..255."""
    x = image.astype(np.float32) / 255.0
    if kind == "gain":
        x = x * float(value)
    elif kind == "gamma":
        x = np.power(x, float(value))
    else:
        raise ValueError(f"intensity shift kind must be 'gain' or 'gamma', got {kind!r}")
    return (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def jitter_copies(items: Sequence[Any], shifts: Sequence[tuple[str, float]] = JITTER) -> list[np.ndarray]:
    """Each item (path, array, Sample or cached features with their source) under every shift, as RGB arrays."""
    from normalcy.data import as_rgb_array

    out = []
    for item in items:
        rgb = as_rgb_array(getattr(item, "source", item))
        out.extend(intensity_shift(rgb, kind, value) for kind, value in shifts)
    return out


GAIN_TARGET = 0.5  # mean grey level every image is scaled to with intensity="gain"


def gain_normalize(image: np.ndarray, target: float = GAIN_TARGET) -> np.ndarray:
    """A uint8 image scaled by one global gain so its mean grey level is `target` (offset and contrast kept)."""
    mean = float(image.mean()) / 255.0
    return intensity_shift(image, "gain", target / max(mean, 1e-3))


class GainNormalized(TransformedItems):
    """A view of image items that yields them gain-normalized when sliced (as the feature loop does).

    A slice of cached features is passed through when all of them are cached (they were made through this view);
    otherwise every item's image is loaded and normalized, so a mixed batch never mixes normalized and raw images.
    """

    def __init__(self, items: Sequence[Any]) -> None:
        super().__init__(items, gain_normalize, keep_cached=True)
