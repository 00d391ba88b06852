"""Put scores of different detectors on one scale: -log of their upper-tail probability among normal ones."""

from __future__ import annotations

import numpy as np

_TAIL_FRACTION = 0.1


def tail_surprise(reference: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """-log p with p = (1 + #{ref >= s}) / (n + 1); beyond the largest reference score it keeps growing
    linearly (exponential tail, scale = mean excess of the top 10 %, at least the reference's standard deviation)
    so extreme scores still rank apart."""
    ref = np.sort(np.asarray(reference, dtype=np.float64))
    s = np.asarray(scores, dtype=np.float64)
    n = ref.size
    if n == 0:
        return s.copy()
    n_ge = n - np.searchsorted(ref, s, side="left")
    out = np.log(n + 1.0) - np.log1p(n_ge)
    m = max(1, int(np.ceil(_TAIL_FRACTION * n)))
    excess = float((ref[n - m :] - ref[max(n - m - 1, 0)]).mean())
    # a few top scores give a noisy tail scale: never let it fall below the reference's own spread, or a
    # normal score just past the largest reference looks like an extreme outlier
    spread = float(ref.std())
    scale = max(excess, spread) if max(excess, spread) > 0 else max(float(ref[-1] - ref[0]), 1.0)
    return out + np.maximum(s - ref[-1], 0.0) / scale
