"""Image items transformed lazily: loaded and transformed only when the feature loop slices them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


class TransformedItems(Sequence):
    """`items` (paths, arrays, Samples or cached features) yielded as `transform(rgb array)` when sliced.

    `transform=None` passes the items through unchanged. With `keep_cached`, a slice made only of cached features
    passes through (they were made through this same transform); otherwise every item's image is loaded and
    transformed, so a batch never mixes transformed and raw images.
    """

    def __init__(
        self,
        items: Sequence[Any],
        transform: Callable[[np.ndarray], np.ndarray] | None,
        *,
        keep_cached: bool = False,
    ) -> None:
        self.items, self.transform, self.keep_cached = items, transform, keep_cached

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: Any) -> Any:
        from normalcy.data import as_rgb_array
        from normalcy.detectors.image.common import CachedFeatures

        if not isinstance(index, slice):
            i = range(len(self))[index]
            return self[i : i + 1][0]
        part = list(self.items[index])
        if self.transform is None:
            return part
        if self.keep_cached and part and all(isinstance(it, CachedFeatures) for it in part):
            return part
        return [self.transform(as_rgb_array(getattr(it, "source", it))) for it in part]
