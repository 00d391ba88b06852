"""Groups for Mondrian (group-conditional) calibration: given labels, or normal modes found by k-means.

Each group gets its own calibration scores, so one product variant's normals do not spend another's false-alarm
budget: within every group the false-alarm rate is at most alpha (exchangeability within the group suffices).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from normalcy.errors import ParameterError

AUTO = "auto"
MAX_AUTO_GROUPS = 4
MIN_SILHOUETTE = 0.5  # below this the modes are not separated enough to be worth splitting the calibration


def as_labels(groups: Any, n: int, name: str = "groups") -> np.ndarray:
    """One string label per item (a clear error when the count differs or a label is missing)."""
    labels = np.asarray(list(groups), dtype=object)
    if labels.ndim != 1 or labels.size != n:
        raise ParameterError(f"{name} must give one label per item: got {labels.size} labels for {n} items")
    if any(g is None or (isinstance(g, float) and np.isnan(g)) for g in labels):
        raise ParameterError(f"{name} has missing labels (None/NaN); give every item a group")
    return labels.astype(str)


@dataclass
class GroupModel:
    """Normal modes found by k-means on standardized per-item descriptors; new items go to the nearest centre."""

    centers: np.ndarray
    mean: np.ndarray
    scale: np.ndarray

    def assign(self, descriptors: np.ndarray) -> np.ndarray:
        """Group label ("mode0", "mode1", ...) of each descriptor row."""
        from sklearn.metrics import pairwise_distances_argmin

        x = np.asarray(descriptors, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.centers.shape[1]:
            raise ParameterError(f"group descriptors must have {self.centers.shape[1]} columns, got {x.shape}")
        return np.array([f"mode{k}" for k in pairwise_distances_argmin((x - self.mean) / self.scale, self.centers)])

    def state(self) -> dict[str, np.ndarray]:
        """Arrays that rebuild the assignment (for model files)."""
        return {"centers": self.centers, "mean": self.mean, "scale": self.scale}

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray]) -> GroupModel:
        """Rebuild from `state()`."""
        return cls(*(np.asarray(arrays[k], dtype=np.float64) for k in ("centers", "mean", "scale")))


def find_modes(descriptors: np.ndarray, min_size: int, max_groups: int = MAX_AUTO_GROUPS,
               seed: int = 0) -> tuple[np.ndarray, GroupModel | None]:
    """Cluster normal items into modes with k-means (k by silhouette, 2..max_groups); one group if unclear.

    A split is kept only when the silhouette is at least MIN_SILHOUETTE and every mode has `min_size` items (the
    fewest that can reach alpha within the group); otherwise all items form one group and the model is None.
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    x = np.asarray(descriptors, dtype=np.float64)
    n = len(x)
    single = np.full(n, "mode0")
    if n < 2 * max(min_size, 2):
        return single, None
    mean, scale = x.mean(0), x.std(0)
    scale = np.where(scale > 1e-12, scale, 1.0)
    z = (x - mean) / scale
    best: tuple[float, Any] | None = None
    for k in range(2, max_groups + 1):
        if n < k * max(min_size, 2):
            break
        km = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(z)
        if np.bincount(km.labels_, minlength=k).min() < min_size:
            continue
        sil = float(silhouette_score(z, km.labels_, sample_size=min(n, 2000), random_state=seed))
        if sil >= MIN_SILHOUETTE and (best is None or sil > best[0]):
            best = (sil, km)
    if best is None:
        return single, None
    model = GroupModel(best[1].cluster_centers_, mean, scale)
    return model.assign(x), model


THUMBNAIL = 8  # side of the colour thumbnail that describes an image for automatic grouping


def item_descriptors(items: Any, kind: str) -> np.ndarray:
    """Per-item descriptors for automatic grouping: the rows themselves, or an 8×8 colour thumbnail per image."""
    if kind == "vector":
        x = np.asarray(items, dtype=np.float64)
        return x.reshape(len(x), -1)
    if kind == "image":
        from PIL import Image

        from normalcy.data import as_rgb_array

        rows = []
        for item in items:
            rgb = as_rgb_array(getattr(item, "source", item))  # cached features keep their source image
            thumb = Image.fromarray(rgb).resize((THUMBNAIL, THUMBNAIL), Image.Resampling.BOX)
            rows.append(np.asarray(thumb, dtype=np.float64).ravel() / 255.0)
        return np.stack(rows)
    raise ParameterError(f"groups='auto' needs image or vector items, not {kind!r}; pass one label per item instead")
