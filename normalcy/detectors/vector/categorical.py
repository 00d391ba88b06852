"""Categorical rows: rare values and unusual pairs of values are anomalous (frequency + co-occurrence).

Score = sum over columns of -log P(value) plus, when `pairwise`, the mean over the other columns of
max(0, -PMI(value_j, value_k)): a pair that co-occurs less often than its parts' frequencies predict
(pointwise mutual information below zero) adds surprise. This is the count-based core of APE-style
scoring of heterogeneous categorical events (Chen et al., IJCAI 2016) without learned embeddings.
Values never seen in fitting get the smoothed probability of an unseen category.
"""

from __future__ import annotations

from typing import Any, Self

import numpy as np

from normalcy.detectors.base import ScoreResult
from normalcy.detectors.vector.base import VectorDetector
from normalcy.detectors.vector.checks import check_features, check_float
from normalcy.errors import ShapeError

MISSING = "<NA>"


def _cell(v: Any) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return MISSING
    return str(v)


def as_categories(X: Any, what: str = "X") -> np.ndarray:
    """Validate a 2-D table of category values and return it as a str array (missing -> "<NA>")."""
    if hasattr(X, "to_numpy") and not isinstance(X, np.ndarray):
        X = X.to_numpy()
    try:
        arr = np.asarray(X, dtype=object)
    except ValueError as exc:
        raise ShapeError(f"{what} is ragged (rows of different lengths): {exc}") from None
    if arr.ndim != 2:
        raise ShapeError(f"{what} must be 2-D (rows x columns), got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ShapeError(f"{what} is empty (shape {arr.shape})")
    return np.vectorize(_cell, otypes=[object])(arr).astype(str)


class CategoryCodes:
    """Per-column sorted vocabularies: value -> its index, or len(vocabulary) for a value never seen."""

    def __init__(self, vocabularies: list[list[str]]) -> None:
        self.vocabularies = [sorted(v) for v in vocabularies]
        self._keys = [np.asarray(v, dtype=str) for v in self.vocabularies]

    @classmethod
    def learn(cls, C: np.ndarray) -> Self:
        """Vocabularies of the values present in each column of C."""
        return cls([np.unique(C[:, j]).tolist() for j in range(C.shape[1])])

    def sizes(self) -> np.ndarray:
        """Vocabulary size of each column."""
        return np.array([len(v) for v in self.vocabularies], dtype=np.int64)

    def encode(self, C: np.ndarray) -> np.ndarray:
        """Integer codes of C (n_rows x n_columns)."""
        codes = np.empty(C.shape, dtype=np.int64)
        for j, keys in enumerate(self._keys):
            pos = np.minimum(np.searchsorted(keys, C[:, j]), keys.size - 1)
            codes[:, j] = np.where(keys[pos] == C[:, j], pos, keys.size)
        return codes


class Categorical(VectorDetector):
    """Frequency and pairwise co-occurrence surprise of categorical values (Laplace smoothing `smoothing`)."""

    name = "categorical"

    def __init__(
        self,
        pairwise: bool = True,
        smoothing: float = 1.0,
        alpha: float = 0.05,
        calibration_fraction: float = 0.2,
        seed: int = 0,
    ) -> None:
        self._store_params(locals())

    def _prepare(self, X: Any) -> np.ndarray:
        C = as_categories(X)
        if getattr(self, "n_features_in_", None) is not None:
            check_features(C, self.n_features_in_, type(self).__name__)
        return C

    def _fit_rows(self, C: np.ndarray) -> None:
        check_float("smoothing", self.smoothing)
        self.codes_ = CategoryCodes.learn(C)
        codes = self.codes_.encode(C)
        sizes = self.codes_.sizes() + 1  # one slot for "unseen"
        self.n_rows_ = len(C)
        self.value_counts_ = np.concatenate(
            [np.bincount(codes[:, j], minlength=s) for j, s in enumerate(sizes)]
        )
        self.value_offsets_ = np.concatenate([[0], np.cumsum(sizes)])
        keys, counts, offsets = [], [], [0]
        for j, k in self._pairs(C.shape[1]):
            joint, c = np.unique(codes[:, j] * sizes[k] + codes[:, k], return_counts=True)
            keys.append(joint)
            counts.append(c)
            offsets.append(offsets[-1] + joint.size)
        self.pair_keys_ = np.concatenate(keys) if keys else np.zeros(0, dtype=np.int64)
        self.pair_counts_ = np.concatenate(counts) if counts else np.zeros(0, dtype=np.int64)
        self.pair_offsets_ = np.asarray(offsets, dtype=np.int64)

    def _pairs(self, d: int) -> list[tuple[int, int]]:
        return [(j, k) for j in range(d) for k in range(j + 1, d)] if self.pairwise else []

    def _log_p_values(self, codes: np.ndarray) -> np.ndarray:
        a, n = float(self.smoothing), float(self.n_rows_)
        sizes = np.diff(self.value_offsets_)
        counts = self.value_counts_[self.value_offsets_[:-1] + codes]
        return np.log(counts + a) - np.log(n + a * sizes)

    def _score(self, items: np.ndarray) -> ScoreResult:
        codes = self.codes_.encode(items)
        log_p = self._log_p_values(codes)
        score = -log_p.sum(axis=1)
        d = codes.shape[1]
        if not self.pairwise or d < 2:
            return ScoreResult(score)
        a, n = float(self.smoothing), float(self.n_rows_)
        sizes = np.diff(self.value_offsets_)
        pair_surprise = np.zeros(len(codes))
        for p, (j, k) in enumerate(self._pairs(d)):
            keys = self.pair_keys_[self.pair_offsets_[p] : self.pair_offsets_[p + 1]]
            counts = self.pair_counts_[self.pair_offsets_[p] : self.pair_offsets_[p + 1]]
            joint = codes[:, j] * sizes[k] + codes[:, k]
            pos = np.minimum(np.searchsorted(keys, joint), keys.size - 1)
            c = np.where(keys[pos] == joint, counts[pos], 0)
            log_joint = np.log(c + a) - np.log(n + a * sizes[j] * sizes[k])
            pmi = log_joint - log_p[:, j] - log_p[:, k]
            pair_surprise += np.maximum(-pmi, 0.0)
        return ScoreResult(score + 2.0 * pair_surprise / (d - 1))

    def _state_arrays(self) -> dict[str, np.ndarray]:
        return {
            "value_counts": self.value_counts_,
            "value_offsets": self.value_offsets_,
            "pair_keys": self.pair_keys_,
            "pair_counts": self.pair_counts_,
            "pair_offsets": self.pair_offsets_,
        }

    def _state_meta(self) -> dict[str, Any]:
        return {
            **super()._state_meta(),
            "vocabularies": self.codes_.vocabularies,
            "n_rows": int(self.n_rows_),
        }

    def _load_arrays(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        for key, value in arrays.items():
            setattr(self, key + "_", np.asarray(value, dtype=np.int64))
        self.codes_ = CategoryCodes([list(map(str, v)) for v in meta["vocabularies"]])
        self.n_rows_ = int(meta["n_rows"])
