"""Conformal p-values, thresholds, severity and the calibration plan."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from normalcy.calibration.conformal import Calibration, calibration_folds, conformal_p_values, score_threshold
from normalcy.errors import ParameterError


def test_p_value_formula_by_hand():
    cal = np.array([1.0, 2.0, 3.0, 4.0])
    np.testing.assert_allclose(conformal_p_values(cal, [0.5, 2.0, 3.5, 9.0]), [5 / 5, 4 / 5, 2 / 5, 1 / 5])


def test_exchangeable_normals_give_uniform_p_values():
    """Over fresh calibration sets, p of a new normal score is uniform on {1/(n+1), ..., 1}."""
    rng = np.random.default_rng(0)
    n_cal, trials = 99, 4000
    cal = rng.normal(size=(trials, n_cal))
    new = rng.normal(size=trials)
    p = np.array([conformal_p_values(c, [s])[0] for c, s in zip(cal, new)])
    counts = np.bincount(np.rint(p * (n_cal + 1)).astype(int) - 1, minlength=n_cal + 1)
    assert stats.chisquare(counts).pvalue > 0.001
    for alpha in (0.01, 0.05, 0.1):
        rate = (p <= alpha).mean()
        assert abs(rate - alpha) < 4 * np.sqrt(alpha * (1 - alpha) / trials)


@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.2])
def test_threshold_matches_p_value_decision(alpha):
    rng = np.random.default_rng(1)
    cal = rng.gamma(2.0, size=300)
    t = score_threshold(cal, alpha)
    s = np.concatenate([rng.gamma(2.0, size=2000), cal, [t, np.nextafter(t, np.inf)]])
    np.testing.assert_array_equal(s > t, conformal_p_values(cal, s) <= alpha)


def test_threshold_infinite_when_too_few_calibration_scores():
    assert score_threshold(np.arange(10.0), 0.01) == np.inf


def test_severity_monotone_and_consistent_with_decision():
    rng = np.random.default_rng(2)
    cal = Calibration(rng.normal(size=500))
    s = np.sort(np.concatenate([rng.normal(size=300), rng.normal(4, 2, size=300)]))
    grades = cal.severity(s, alpha=0.01)
    order = {g: i for i, g in enumerate(("normal", "suspicious", "anomalous", "severe"))}
    ranks = [order[g] for g in grades]
    assert ranks == sorted(ranks)
    flagged = cal.p_values(s) <= 0.01
    assert all((g in ("anomalous", "severe")) == f for g, f in zip(grades, flagged))
    assert {"normal", "suspicious", "anomalous", "severe"} <= set(grades)


def test_plan_holdout_or_cross_fit():
    method, folds = calibration_folds(600, 0.2, 0.01, seed=0)
    assert method == "holdout" and len(folds) == 1
    tr, ca = folds[0]
    assert len(ca) == 120 and not set(tr) & set(ca) and len(tr) + len(ca) == 600
    method, folds = calibration_folds(40, 0.2, 0.01, seed=0)
    assert method == "cross-fit" and len(folds) == 5
    assert sorted(np.concatenate([c for _, c in folds]).tolist()) == list(range(40))
    assert calibration_folds(1, 0.2, 0.01, 0)[0] == "none"


def test_bad_alpha():
    with pytest.raises(ParameterError):
        Calibration(np.arange(5.0)).threshold(1.5)


def test_pixel_threshold_interpolates_quantiles():
    from normalcy.calibration.conformal import PIXEL_FPR_GRID, pixel_quantiles

    rng = np.random.default_rng(3)
    maps = [rng.random((50, 50)) for _ in range(20)]
    cal = Calibration(np.arange(5.0), pixel_fpr_levels=PIXEL_FPR_GRID, pixel_quantiles=pixel_quantiles(maps))
    assert cal.pixel_threshold(0.01) == pytest.approx(0.99, abs=0.005)
    assert cal.pixel_threshold(0.5) == pytest.approx(0.5, abs=0.02)
