"""Fit a detector with out-of-sample calibration (hold-out or cross-conformal, per group) and decide new items.

`fit_calibrated` is what `Detector.fit` runs: it plans the folds, fits and scores each, keeps the fold models when
cross-conformal, refits the model that produces scores and maps, and builds the `Calibration`. `score_items` adds
what the calibration needs besides the main score (each fold model's score, each item's group); `decisions` turns
that into p-values, intervals, decision status and notes, one per item.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from normalcy.calibration.conformal import (
    PIXEL_FPR_GRID,
    Calibration,
    calibration_folds,
    check_alpha,
    pixel_quantiles,
    unreachable_note,
)
from normalcy.calibration.folds import fold_scores, snapshot
from normalcy.calibration.groups import (
    AUTO,
    SUBFOLDERS,
    GroupModel,
    as_labels,
    find_modes,
    folder_name,
    item_descriptors,
    item_path,
    resolve_groups,
)
from normalcy.calibration.uncertainty import INTERVAL_LEVEL, decision_status, p_interval
from normalcy.errors import ParameterError


def _take(items: Any, idx: np.ndarray) -> Any:
    if isinstance(items, np.ndarray):
        return items[idx]
    return [items[int(i)] for i in idx]


def plan_folds(labels: np.ndarray | None, n: int, fraction: float, alpha: float,
               seed: int) -> tuple[str, list[tuple]]:
    """`calibration_folds` per group, combined: hold-out if every group can afford one, else stratified folds."""
    if labels is None or len(np.unique(labels)) < 2:
        return calibration_folds(n, fraction, alpha, seed)
    plans = {g: (np.flatnonzero(labels == g), calibration_folds(int((labels == g).sum()), fraction, alpha, seed))
             for g in np.unique(labels)}
    if any(method == "none" for _, (method, _) in plans.values()):
        return "none", []
    if all(method == "holdout" for _, (method, _) in plans.values()):
        cal = np.sort(np.concatenate([idx[f[0][1]] for idx, (_, f) in plans.values()]))
        return "holdout", [(np.setdiff1d(np.arange(n), cal), cal)]
    k = min(len(f) for _, (_, f) in plans.values() if f)
    rng = np.random.default_rng(seed)
    parts = [np.array_split(rng.permutation(idx), k) for idx, _ in plans.values()]
    folds = []
    for j in range(k):
        cal = np.sort(np.concatenate([p[j] for p in parts]))
        folds.append((np.setdiff1d(np.arange(n), cal), cal))
    return "cross-conformal", folds


def fit_groups(detector: Any, items: Any, groups: Any, alpha: float) -> tuple[np.ndarray | None, Any, str | None]:
    """Group label per fit item (given, or modes found by k-means for `"auto"`; None = one pool), the mode model, and
    how predict assigns a new item's group (None: by the model or the caller; "subfolders"/"table": nearest centre)."""
    if groups is None:
        return None, None, None
    spec, groups = groups, resolve_groups(groups, items)
    if isinstance(groups, str) and groups == AUTO:
        need = int(np.ceil(1.0 / alpha - 1e-9)) - 1
        min_size = int(np.ceil(need / max(float(getattr(detector, "calibration_fraction", 0.2)), 1e-9)))
        labels, model = find_modes(item_descriptors(items, detector.kind), min_size=min_size,
                                   seed=int(getattr(detector, "seed", 0)))
        return (labels if model is not None else None), model, None
    if isinstance(groups, str):
        raise ParameterError(f"groups must be one label per item, 'auto', 'subfolders' or a .csv file (path,group), "
                             f"got {groups!r}")
    labels = as_labels(groups, len(items))
    if groups is spec:  # labels given by the caller: predict takes them too
        return labels, None, None
    if len(np.unique(labels)) < 2:  # one sub-folder / one group in the CSV: a single pool
        return None, None, None
    # from sub-folders or a CSV: new items without a label go to the nearest group centre
    rule = SUBFOLDERS if str(spec) == SUBFOLDERS else "table"
    return labels, GroupModel.nearest_centres(item_descriptors(items, detector.kind), labels), rule


def fit_calibrated(detector: Any, items: Any, groups: Any = None) -> None:
    """Fit `detector` on `items` keeping out-of-sample normal scores; sets calibration_ and the fold models."""
    n = len(items)
    alpha = check_alpha(detector.alpha)
    fraction = float(getattr(detector, "calibration_fraction", 0.2))
    if not 0.0 <= fraction < 1.0:
        raise ParameterError(f"calibration_fraction must be in [0, 1), got {fraction}")
    labels, group_model, group_rule = fit_groups(detector, items, groups, alpha)
    method, folds = plan_folds(labels, n, fraction, alpha, int(getattr(detector, "seed", 0)))
    states, per_fold, cal_idx_all, maps = [], [], [], []
    for train_idx, cal_idx in folds:
        detector._fit(_take(items, train_idx))
        result = detector._score(_take(items, cal_idx))
        per_fold.append(np.asarray(result.scores, dtype=np.float64))
        cal_idx_all.append(cal_idx)
        if result.maps is not None:
            maps.extend(result.maps)
        if method == "cross-conformal":
            states.append(snapshot(detector))
    if method != "holdout":
        detector._fit(items)  # the model behind scores and maps; p-values come from the fold models
    detector.fold_states_ = states or None  # set only once fitting succeeded (a failed fit stays unfitted)
    detector.group_model_ = group_model
    detector.group_rule_ = group_rule
    detector.calibration_ = build_calibration(method, per_fold, cal_idx_all, labels, maps,
                                              int(getattr(detector, "seed", 0)))


def build_calibration(method: str, per_fold: list[np.ndarray], cal_idx: list[np.ndarray],
                      labels: np.ndarray | None, maps: list[np.ndarray], seed: int = 0) -> Calibration:
    """The Calibration (pooled, and one per group) from each fold's held-out scores."""
    cross = method == "cross-conformal"
    pooled = np.concatenate(per_fold) if per_fold else np.empty(0)
    cal = Calibration(pooled, method=method, fold_scores=list(per_fold) if cross else None)
    if labels is not None:
        for g in np.unique(labels):
            sub = [s[labels[idx] == g] for s, idx in zip(per_fold, cal_idx)]
            cal.groups[str(g)] = Calibration(np.concatenate(sub) if sub else np.empty(0), method=method,
                                             fold_scores=sub if cross else None)
    if maps:
        cal.pixel_fpr_levels = PIXEL_FPR_GRID.copy()
        cal.pixel_quantiles = pixel_quantiles(maps, seed=seed)
    return cal


def score_items(detector: Any, items: Any) -> Any:
    """The detector's ScoreResult plus each fold model's scores (cross-conformal) and each item's group (auto)."""
    states = getattr(detector, "fold_states_", None)
    if states and hasattr(detector, "_cache_features"):
        items = detector._cache_features(items)  # features once, scored by the main and every fold model
    result = detector._score(items)
    result.fold_scores = fold_scores(detector, items, lambda it: detector._score(it).scores)
    model = getattr(detector, "group_model_", None)
    if model is not None:
        result.groups = model.assign(item_descriptors(items, detector.kind))
        if getattr(detector, "group_rule_", None) == SUBFOLDERS:  # a file in a known group's folder: that group
            known = set(model.labels or ())
            folders = [None if item_path(it) is None else folder_name(item_path(it)) for it in items]
            result.groups = np.array([f if f in known else g for f, g in zip(folders, result.groups)])
    return result


@dataclass
class Decisions:
    """Per-item calibrated outcome: p-value, flag, grade, p interval, status, calibration size, group, note."""

    p: np.ndarray
    flagged: np.ndarray
    grades: list[str]
    low: np.ndarray
    high: np.ndarray
    status: list[str]
    n_cal: np.ndarray
    groups: np.ndarray | None
    notes: list[str]


def decisions(cal: Calibration, result: Any, alpha: float, groups: Any = None,
              level: float = INTERVAL_LEVEL) -> Decisions:
    """Decide every scored item at `alpha` (within its group when the calibration is grouped)."""
    scores = np.asarray(result.scores, dtype=np.float64)
    labels = as_labels(groups, scores.size) if groups is not None else getattr(result, "groups", None)
    if cal.groups and labels is None:
        raise ParameterError(f"this detector was calibrated per group ({', '.join(sorted(cal.groups))}): pass "
                             "groups=[...] with one label per item")
    fold = getattr(result, "fold_scores", None)
    notes_extra = ""
    if cal.cross and fold is None:  # scored without the fold models (e.g. an old caller): pooled, conservative
        notes_extra = "fold-model scores missing: p-value from the refitted model (conservative)"
    p = cal.p_values(scores, fold, labels if cal.groups else None)
    n_cal = cal.sizes(labels if cal.groups else None, scores.size)
    counts = np.where(np.isfinite(p), np.rint(p * (n_cal + 1) - 1), 0)
    low, high = p_interval(counts, n_cal, level)
    flagged = np.isfinite(p) & (p <= alpha)
    notes = []
    for n in n_cal:
        note = unreachable_note(alpha, int(n))
        notes.append("; ".join(x for x in (note, notes_extra) if x))
    return Decisions(p, flagged, cal.severity(scores, alpha, p=p, groups=labels if cal.groups else None),
                     low, high, decision_status(p, low, high, alpha), n_cal, labels, notes)


# ---- model files ------------------------------------------------------------------------------------------------
def calibration_arrays(detector: Any, prefix: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Fold scores, group calibrations, group model and fold-model states as arrays + metadata for a model file."""
    cal: Calibration = detector.calibration_
    arrays: dict[str, np.ndarray] = {}
    meta: dict[str, Any] = {"groups": sorted(cal.groups), "folds": len(cal.fold_scores or [])}
    for k, f in enumerate(cal.fold_scores or []):
        arrays[f"{prefix}fold{k}"] = f
    for g, c in cal.groups.items():
        arrays[f"{prefix}group/{g}/scores"] = c.scores
        for k, f in enumerate(c.fold_scores or []):
            arrays[f"{prefix}group/{g}/fold{k}"] = f
    model = getattr(detector, "group_model_", None)
    if model is not None:
        arrays |= {f"{prefix}group_model/{k}": v for k, v in model.state().items()}
        meta["group_labels"] = list(model.labels) if model.labels else None
        meta["group_rule"] = getattr(detector, "group_rule_", None)
    refiner = getattr(detector, "refiner_", None)  # the second look (detectors/image/refine.py), duck-typed
    if refiner is not None:
        refine_arrays, meta["refine"] = refiner.state()
        arrays |= {f"{prefix}refine/{k}": v for k, v in refine_arrays.items()}
    states = getattr(detector, "fold_states_", None) or []
    meta["fold_models"] = []
    from normalcy.calibration.folds import using

    for k, state in enumerate(states):
        with using(detector, state):
            arrays |= {f"{prefix}fold_model{k}/{name}": np.ascontiguousarray(v)
                       for name, v in detector._state_arrays().items()}
            meta["fold_models"].append(detector._state_meta())
    return arrays, meta


def restore_calibration(detector: Any, cal: Calibration, arrays: dict[str, np.ndarray], meta: dict[str, Any],
                        prefix: str) -> None:
    """Inverse of `calibration_arrays` (pops the arrays it reads); the main state must be loaded already."""
    if meta.get("folds"):
        cal.fold_scores = [np.sort(arrays.pop(f"{prefix}fold{k}")) for k in range(meta["folds"])]
    for g in meta.get("groups", []):
        sub = Calibration(arrays.pop(f"{prefix}group/{g}/scores"), method=cal.method)
        if meta.get("folds"):
            sub.fold_scores = [np.sort(arrays.pop(f"{prefix}group/{g}/fold{k}")) for k in range(meta["folds"])]
        cal.groups[g] = sub
    if "refine" in meta:  # rebuilt by detectors/image/refine.py when first used (calibration sits below detectors)
        head = f"{prefix}refine/"
        detector.refiner_ = None
        detector._refine_state = ({k[len(head):]: arrays.pop(k) for k in [k for k in arrays if k.startswith(head)]},
                                  meta["refine"])
    gm = {k.rsplit("/", 1)[1]: arrays.pop(k) for k in [k for k in arrays if k.startswith(prefix + "group_model/")]}
    detector.group_model_ = GroupModel.from_state(gm, meta.get("group_labels")) if gm else None
    detector.group_rule_ = meta.get("group_rule")
    states = []
    own = snapshot(detector)
    for k, state_meta in enumerate(meta.get("fold_models", [])):
        head = f"{prefix}fold_model{k}/"
        fold_arrays = {key[len(head):]: arrays.pop(key) for key in [key for key in arrays if key.startswith(head)]}
        detector._load_state(fold_arrays, state_meta)
        states.append(snapshot(detector))
    if states:
        vars(detector).update(own)
        detector.fold_states_ = states
