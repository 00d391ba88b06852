"""The K fold models of cross-conformal calibration, kept so new items are scored by each of them.

A fold model is the detector's fitted state after `_fit` on that fold's training part. States are held as shallow
snapshots of the instance attributes (`_fit` rebinds its attributes, so a snapshot stays intact when the next fold
is fitted) and swapped in to score; model files store them through the detector's own `_state_arrays`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

KEEP = ("calibration_", "n_fit_", "fold_states_", "group_model_", "model_meta_", "_model_path", "refiner_",
        "_refine_state", "group_rule_")


def snapshot(detector: Any) -> dict[str, Any]:
    """The detector's fitted state: every attribute except its parameters and the calibration bookkeeping."""
    params = set(detector._param_names())
    return {k: v for k, v in vars(detector).items() if k not in params and k not in KEEP}


@contextmanager
def using(detector: Any, state: dict[str, Any]) -> Iterator[None]:
    """Temporarily install a fold model's state, restoring the detector's own state afterwards."""
    own = snapshot(detector)
    for k in own:
        if k not in state:
            delattr(detector, k)
    vars(detector).update(state)
    try:
        yield
    finally:
        for k in snapshot(detector):
            if k not in own:
                delattr(detector, k)
        vars(detector).update(own)


def fold_scores(detector: Any, items: Any, score: Callable[[Any], np.ndarray]) -> list[np.ndarray] | None:
    """Each kept fold model's scores of `items` (None when the detector keeps no fold models)."""
    states = getattr(detector, "fold_states_", None)
    if not states:
        return None
    out = []
    for state in states:
        with using(detector, state):
            out.append(np.asarray(score(items), dtype=np.float64))
    return out
