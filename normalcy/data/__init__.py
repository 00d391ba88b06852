"""Data loading: image/mask readers, MVTec-layout and plain-folder listings, and the built-in demo data; plus
the low-level helpers every room may use (`files`: atomic writes, `progress`: the one progress display)."""

from __future__ import annotations

from typing import Any

from normalcy.data.images import (
    IMAGE_EXTENSIONS,
    as_rgb_array,
    iter_batches,
    list_images,
    read_image,
    read_mask,
)
from normalcy.data.mvtec import find_categories, load_folder, load_mvtec
from normalcy.data.samples import Sample

_LAZY = {"make_demo_dataset", "DEFECT_TYPES"}

__all__ = [
    "DEFECT_TYPES",
    "IMAGE_EXTENSIONS",
    "Sample",
    "as_rgb_array",
    "find_categories",
    "iter_batches",
    "list_images",
    "load_folder",
    "load_mvtec",
    "make_demo_dataset",
    "read_image",
    "read_mask",
]


def __getattr__(name: str) -> Any:
    """Import the demo generator only when used: it needs scipy.ndimage, which is slow to import."""
    if name in _LAZY:
        from normalcy.data import synthetic

        return getattr(synthetic, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
