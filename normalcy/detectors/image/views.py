"""Test-time views: flipped copies of the test images, whose anomaly maps are flipped back and averaged.

A defect scores high in every view of the image, a chance match of a normal patch in one view only, so the mean of
the views' maps is a lower-variance map (PatchCore's `test_views`; measured in docs/design.md, "Fourth pass").
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from normalcy.detectors.image.lazy_items import TransformedItems
from normalcy.errors import ParameterError

VIEWS = ("identity", "hflip", "vflip")
_AXIS = {"hflip": 1, "vflip": 0}  # image axis (H×W×3) flipped by each view; maps (…×h×w) flip axis - 2


def check_views(views: Sequence[str] | str) -> tuple[str, ...]:
    """The views as a tuple of known names, each at most once (a bare string is one view)."""
    out = (views,) if isinstance(views, str) else tuple(views)
    unknown = [v for v in out if v not in VIEWS]
    if not out or unknown or len(set(out)) != len(out):
        raise ParameterError(f"test_views must be distinct names from {', '.join(VIEWS)}; got {views!r}")
    return out


def flip_image(image: np.ndarray, view: str) -> np.ndarray:
    """An H×W×C image as `view` shows it (a contiguous copy unless the view is the identity)."""
    if view == "identity":
        return image
    return np.ascontiguousarray(np.flip(image, axis=_AXIS[view]))


def unflip(maps: torch.Tensor, view: str) -> torch.Tensor:
    """Maps (…×h×w) of a view's images flipped back onto the original images (a flip is its own inverse)."""
    if view == "identity":
        return maps
    return maps.flip(-2 + _AXIS[view])


class ViewItems(TransformedItems):
    """The image items as one view shows them, loaded and flipped only when sliced (as the feature loop does);
    cached features pass through only for the identity (they hold the unflipped image)."""

    def __init__(self, items: Sequence[Any], view: str) -> None:
        super().__init__(items, None if view == "identity" else functools.partial(flip_image, view=view))
        self.view = view
