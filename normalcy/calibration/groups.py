"""Groups for Mondrian (group-conditional) calibration: given labels, or normal modes found by k-means.

Each group gets its own calibration scores, so one product variant's normals do not spend another's false-alarm
budget: within every group the false-alarm rate is at most alpha (exchangeability within the group suffices).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
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
    """Normal modes found by k-means on standardized per-item descriptors; new items go to the nearest centre.

    `labels` names the centres when the groups were given (sub-folders, a CSV): the centre of a group is the mean
    descriptor of its fit items, so an item with no known group goes to the nearest one.
    """

    centers: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    labels: tuple[str, ...] | None = None

    def assign(self, descriptors: np.ndarray) -> np.ndarray:
        """Group label ("mode0", "mode1", ... or the given names) of each descriptor row."""
        from sklearn.metrics import pairwise_distances_argmin

        x = np.asarray(descriptors, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.centers.shape[1]:
            raise ParameterError(f"group descriptors must have {self.centers.shape[1]} columns, got {x.shape}")
        names = self.labels or tuple(f"mode{k}" for k in range(len(self.centers)))
        return np.array([names[k] for k in pairwise_distances_argmin((x - self.mean) / self.scale, self.centers)])

    @classmethod
    def nearest_centres(cls, descriptors: np.ndarray, labels: np.ndarray) -> GroupModel:
        """Centres of given groups (mean standardized descriptor per label), to assign items without a label."""
        x = np.asarray(descriptors, dtype=np.float64)
        mean, scale = x.mean(0), x.std(0)
        scale = np.where(scale > 1e-12, scale, 1.0)
        z = (x - mean) / scale
        names = tuple(str(g) for g in np.unique(labels))
        return cls(np.stack([z[labels == g].mean(0) for g in names]), mean, scale, names)

    def state(self) -> dict[str, np.ndarray]:
        """Arrays that rebuild the assignment (for model files)."""
        return {"centers": self.centers, "mean": self.mean, "scale": self.scale}

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], labels: list[str] | None = None) -> GroupModel:
        """Rebuild from `state()` (and the centres' names, kept in the model file's metadata)."""
        return cls(*(np.asarray(arrays[k], dtype=np.float64) for k in ("centers", "mean", "scale")),
                   labels=tuple(labels) if labels else None)


def find_modes(descriptors: np.ndarray, min_size: int, max_groups: int = MAX_AUTO_GROUPS,
               seed: int = 0, standardize: bool = True) -> tuple[np.ndarray, GroupModel | None]:
    """Cluster normal items into modes with k-means (k by silhouette, 2..max_groups); one group if unclear.

    A split is kept only when the silhouette is at least MIN_SILHOUETTE and every mode has `min_size` items (the
    fewest that can reach alpha within the group); otherwise all items form one group and the model is None.
    `standardize=False` clusters in the descriptors' own units (e.g. principal components, whose variance matters).
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    x = np.asarray(descriptors, dtype=np.float64)
    n = len(x)
    single = np.full(n, "mode0")
    if n < 2 * max(min_size, 2):
        return single, None
    mean, scale = x.mean(0), x.std(0)
    scale = np.where(scale > 1e-12, scale, 1.0) if standardize else np.ones_like(scale)  # False: keep the units
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


SUBFOLDERS = "subfolders"


def item_path(item: Any) -> Path | None:
    """The file behind an item (a path, a Sample, cached features of either), None for in-memory images."""
    item = getattr(item, "source", item)
    if isinstance(item, (str, Path)):
        return Path(item)
    path = getattr(item, "path", None)
    return Path(path) if path is not None else None


def subfolder_labels(items: Any) -> np.ndarray:
    """Group of each item = the name of the folder holding its file (a clear error for in-memory images)."""
    out = []
    for i, item in enumerate(items):
        path = item_path(item)
        if path is None:
            raise ParameterError(f"groups='subfolders' needs image files; item {i} has no path: pass one label per "
                                 "item instead")
        out.append(folder_name(path))
    return np.array(out)


def folder_name(path: Path) -> str:
    """Name of the folder holding `path` as given (a symlinked file keeps the folder it is listed in)."""
    return Path(os.path.abspath(path)).parent.name


def csv_labels(table: str | Path, items: Any, what: str = "fit") -> np.ndarray:
    """Group of each item from a CSV with columns path,group (paths relative to the CSV's folder, or absolute).

    An item is matched by its full path, else by its file name when that name is unique in the table. `what`
    names the items in the error ("fit" images, or "new" ones at predict).
    """
    import csv

    table = Path(table)
    if not table.is_file():
        raise ParameterError(f"groups file {table} does not exist; give a CSV with columns path,group")
    with open(table, newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not {"path", "group"} <= set(rows[0]):
        got = list(rows[0]) if rows else []
        raise ParameterError(f"{table} must have a header with columns path,group (got {got})")
    by_path, by_name = {}, {}
    for row in rows:
        p = Path(row["path"])
        full = Path(os.path.abspath(p if p.is_absolute() else table.parent / p))
        by_path[full] = row["group"]
        by_name.setdefault(p.name, []).append(row["group"])
    out, missing = [], []
    for i, item in enumerate(items):
        path = item_path(item)
        group = None
        if path is not None:
            group = by_path.get(Path(os.path.abspath(path)))
            if group is None and len(by_name.get(path.name, [])) == 1:
                group = by_name[path.name][0]
        if group is None or group == "":
            missing.append(str(path) if path is not None else f"item {i}")
        out.append(group)
    if missing:
        raise ParameterError(f"{table} gives no group for {len(missing)} {what} image(s), e.g. {missing[:3]}; add a "
                             "row path,group for each")
    return np.array(out)


def resolve_groups(spec: Any, items: Any, what: str = "fit") -> Any:
    """Labels for `fit(groups=...)` or new items from "subfolders" or a .csv file; "auto", labels, None pass through."""
    if isinstance(spec, (str, Path)) and str(spec) == SUBFOLDERS:
        return subfolder_labels(items)
    if isinstance(spec, Path) or (isinstance(spec, str) and spec.lower().endswith(".csv")):
        return csv_labels(spec, items, what=what)
    return spec


def given_groups(spec: str | Path, paths: list[Path], known: list[str]) -> dict[str, str]:
    """Group of each new file from "subfolders" or a path,group CSV, checked against the model's groups.

    For predict: the caller states each new image's group instead of the nearest-centre guess; a label the model
    was not calibrated for is a clear error before anything is scored.
    """
    if not known:
        raise ParameterError("--groups at predict needs a model fitted with groups (normalcy fit ... --groups "
                             "subfolders|FILE.csv); this model has one calibration pool")
    if str(spec) != SUBFOLDERS and not str(spec).lower().endswith(".csv"):
        raise ParameterError(f"groups at predict must be 'subfolders' or a .csv file (path,group), got {spec!r}")
    labels = resolve_groups(spec, paths, what="new") if paths else np.empty(0, dtype=str)
    unknown = sorted(set(labels.tolist()) - set(known))
    if unknown:
        raise ParameterError(f"groups {unknown} were not seen when fitting; the model knows {sorted(known)}: give "
                             "each new image one of those groups")
    return {str(p): str(g) for p, g in zip(paths, labels)}
