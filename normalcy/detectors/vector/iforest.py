"""Isolation Forest kept as plain node arrays, grown by numpy (default) or by scikit-learn, scored by numpy.

`trees="numpy"` grows all trees at once, level by level (`isolation.grow_forest`: the same algorithm, ~50-100x
faster to fit than scikit-learn's per-tree loop). `trees="sklearn"` fits `sklearn.ensemble.IsolationForest`
and flattens its trees into the same arrays (feature, threshold, children, and for leaves the expected path
length depth + c(n_leaf)); a test checks that our scoring then equals scikit-learn's exactly. Scoring walks all
trees at once with vectorized numpy and applies the formula 2^-E[h]/c(max_samples). Nothing is pickled.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from normalcy.detectors.base import ScoreResult
from normalcy.detectors.vector.base import VectorDetector
from normalcy.detectors.vector.checks import check_choice, check_int
from normalcy.errors import ParameterError

TREE_BUILDERS = ("numpy", "sklearn")

_EULER_GAMMA = 0.5772156649015329
_ROW_BLOCK = 512  # rows walked together: keeps the node arrays in cache


def average_path_length(n: np.ndarray) -> np.ndarray:
    """c(n): mean path length of an unsuccessful BST search among n points (0 for n <= 1, 1 for n == 2)."""
    n = np.asarray(n, dtype=np.float64)
    out = np.zeros_like(n)
    two = n == 2
    big = n > 2
    out[two] = 1.0
    out[big] = 2.0 * (np.log(n[big] - 1.0) + _EULER_GAMMA) - 2.0 * (n[big] - 1.0) / n[big]
    return out


def _node_depths(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Depth of every node (root = 0); children always have larger ids than their parent in sklearn trees."""
    depth = np.zeros(left.size, dtype=np.float64)
    for node in range(left.size):
        if left[node] != -1:
            depth[left[node]] = depth[right[node]] = depth[node] + 1
    return depth


def flatten_forest(forest: Any) -> dict[str, np.ndarray]:
    """Concatenate the fitted trees of a sklearn IsolationForest into flat node arrays (ids made global)."""
    n_features = forest.n_features_in_
    parts: dict[str, list[np.ndarray]] = {
        k: [] for k in ("feature", "threshold", "left", "right", "leaf_value")
    }
    roots, offset = [], 0
    for est, feats in zip(forest.estimators_, forest.estimators_features_):
        t = est.tree_
        left, right = t.children_left.astype(np.int64), t.children_right.astype(np.int64)
        leaf = left == -1
        fmap = np.asarray(feats) if forest._max_features != n_features else np.arange(n_features)
        parts["feature"].append(np.where(leaf, 0, fmap[np.maximum(t.feature, 0)]))
        parts["threshold"].append(t.threshold.astype(np.float64))
        parts["left"].append(np.where(leaf, np.arange(left.size), left) + offset)
        parts["right"].append(np.where(leaf, np.arange(left.size), right) + offset)
        value = _node_depths(left, right) + average_path_length(t.n_node_samples)
        parts["leaf_value"].append(np.where(leaf, value, 0.0))
        roots.append(offset)
        offset += left.size
    flat = {k: np.concatenate(v) for k, v in parts.items()}
    flat["feature"] = flat["feature"].astype(np.int64)
    flat["roots"] = np.asarray(roots, dtype=np.int64)
    return flat


def forest_path_lengths(flat: dict[str, np.ndarray], X: np.ndarray, max_depth: int) -> np.ndarray:
    """Mean over trees of the expected isolation path length of each row (all trees walked at once)."""
    Xf = np.ascontiguousarray(X, dtype=np.float32)  # sklearn compares float32 inputs with float64 thresholds
    d = Xf.shape[1]
    feat = flat["feature"].astype(np.int32)
    thr = flat["threshold"]
    children = np.stack([flat["right"], flat["left"]], axis=1).astype(np.int32).ravel()  # [2i + went_left]
    roots = flat["roots"].astype(np.int32)
    out = np.empty(len(Xf))
    for start in range(0, len(Xf), _ROW_BLOCK):
        block = Xf[start : start + _ROW_BLOCK]
        cells = block.ravel()
        row_base = (np.arange(len(block), dtype=np.int32) * d)[:, None]
        node = np.broadcast_to(roots, (len(block), roots.size)).copy()
        for _ in range(max_depth):  # leaves point to themselves, so extra steps are harmless
            went_left = np.take(cells, row_base + np.take(feat, node)) <= np.take(thr, node)
            node = np.take(children, 2 * node + went_left)
        out[start : start + _ROW_BLOCK] = np.take(flat["leaf_value"], node).mean(axis=1)
    return out


class IForest(VectorDetector):
    """Isolation Forest (scikit-learn's implementation underneath); score = 2^(-E[path] / c(max_samples))."""

    name = "iforest"

    def __init__(
        self,
        n_estimators: int = 100,
        max_samples: int | float | str = "auto",
        max_features: float = 1.0,
        trees: str = "numpy",
        alpha: float = 0.05,
        calibration_fraction: float = 0.2,
        seed: int = 0,
    ) -> None:
        self._store_params(locals())

    def _fit_rows(self, X: np.ndarray) -> None:
        check_int("n_estimators", self.n_estimators)
        self.offset_, self.exponent_ = float32_safe_shift(X)
        X = np.ldexp(X - self.offset_, self.exponent_)
        if check_choice("trees", self.trees, TREE_BUILDERS) == "sklearn":
            self._fit_sklearn(X)
            return
        from normalcy.detectors.vector.isolation import grow_forest

        n_sub = _n_samples(self.max_samples, len(X))
        n_feat = _n_features(self.max_features, X.shape[1])
        rng = np.random.default_rng(int(self.seed))
        flat, self.max_depth_ = grow_forest(X, int(self.n_estimators), n_sub, n_feat, rng)
        for key, value in flat.items():
            setattr(self, key + "_", value)
        self.c_norm_ = float(average_path_length(np.array([n_sub]))[0])

    def _fit_sklearn(self, X: np.ndarray) -> None:
        from sklearn.ensemble import IsolationForest

        forest = IsolationForest(
            n_estimators=int(self.n_estimators),
            max_samples=self.max_samples,
            max_features=self.max_features,
            contamination="auto",
            random_state=int(self.seed),
        ).fit(X)
        flat = flatten_forest(forest)
        for key, value in flat.items():
            setattr(self, key + "_", value)
        self.max_depth_ = int(max(est.tree_.max_depth for est in forest.estimators_))
        self.c_norm_ = float(average_path_length(np.array([forest._max_samples]))[0])

    def _flat(self) -> dict[str, np.ndarray]:
        keys = ("feature", "threshold", "left", "right", "leaf_value", "roots")
        return {k: getattr(self, k + "_") for k in keys}

    def _score(self, items: np.ndarray) -> ScoreResult:
        if getattr(self, "exponent_", None) is not None:
            items = np.ldexp(items - self.offset_, self.exponent_)
        mean_path = forest_path_lengths(self._flat(), items, self.max_depth_)
        if self.c_norm_ <= 0:
            return ScoreResult(np.ones(len(items)))
        return ScoreResult(2.0 ** (-mean_path / self.c_norm_))

    def _state_arrays(self) -> dict[str, np.ndarray]:
        shift = {"offset": self.offset_, "exponent": self.exponent_} if hasattr(self, "exponent_") else {}
        return {**self._flat(), **shift}

    def _state_meta(self) -> dict[str, Any]:
        return {**super()._state_meta(), "max_depth": self.max_depth_, "c_norm": self.c_norm_}

    def _load_arrays(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        for key, value in arrays.items():
            setattr(self, key + "_", np.asarray(value))
        self.max_depth_ = int(meta["max_depth"])
        self.c_norm_ = float(meta["c_norm"])


def float32_safe_shift(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(offset, power-of-two exponent) per column so that ldexp(X - offset, exponent) survives the float32 trees.

    Multiplying by a power of two is exact, so on ordinary data the trees and scores are exactly those on X
    (offset 0); values near the float64 limits (1e-200, 1e300) no longer become 0 or inf in float32. A column whose
    spread is below float32 resolution of its values (e.g. 1 + 1e-9 noise) is first centred on its median.
    """
    top = np.abs(X).max(axis=0)
    span = X.max(axis=0) - X.min(axis=0)
    offset = np.where(span < 1e-5 * top, np.median(X, axis=0), 0.0)
    top = np.abs(X - offset).max(axis=0)
    exponent = np.where(top > 0, -np.frexp(np.where(top > 0, top, 1.0))[1], 0).astype(np.int64)
    return offset.astype(np.float64), exponent


def _n_samples(max_samples: int | float | str, n: int) -> int:
    """Rows per tree, as scikit-learn reads `max_samples` ("auto" = min(256, n), an int, or a fraction of n)."""
    if max_samples == "auto":
        return min(256, n)
    if isinstance(max_samples, (int, np.integer)) and not isinstance(max_samples, bool) and max_samples >= 1:
        return min(int(max_samples), n)
    if isinstance(max_samples, float) and 0.0 < max_samples <= 1.0:
        return max(1, int(max_samples * n))
    raise ParameterError(f"max_samples must be 'auto', an int >= 1 or a fraction in (0, 1]; got {max_samples!r}")


def _n_features(max_features: int | float, d: int) -> int:
    """Features per tree (an int count or a fraction of the columns), as scikit-learn reads `max_features`."""
    if isinstance(max_features, (int, np.integer)) and not isinstance(max_features, bool) and max_features >= 1:
        return min(int(max_features), d)
    if isinstance(max_features, float) and 0.0 < max_features <= 1.0:
        return max(1, int(max_features * d))
    raise ParameterError(f"max_features must be an int >= 1 or a fraction in (0, 1]; got {max_features!r}")
