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


def test_plan_holdout_or_cross_conformal():
    method, folds = calibration_folds(600, 0.2, 0.01, seed=0)
    assert method == "holdout" and len(folds) == 1
    tr, ca = folds[0]
    assert len(ca) == 99 and not set(tr) & set(ca) and len(tr) + len(ca) == 600  # 120 snapped: 0.01 * 100 exact
    method, folds = calibration_folds(40, 0.2, 0.01, seed=0)
    assert method == "cross-conformal" and len(folds) == 5
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


# ---- issue 17: exact level, cross-conformal small samples, uncertainty, unreachable alpha ------------------------
def test_snapped_holdout_makes_alpha_exact():
    from normalcy.calibration.conformal import expected_fpr

    for n in (500, 571, 990, 2000, 5000):
        method, folds = calibration_folds(n, 0.2, 0.01, seed=0)
        n_cal = len(folds[0][1])
        assert method == "holdout" and (n_cal + 1) % 100 == 0 and n_cal >= 99
        assert expected_fpr(n_cal, 0.01) == pytest.approx(0.01) and expected_fpr(n_cal, 0.05) == pytest.approx(0.05)
    assert expected_fpr(114, 0.05) == pytest.approx(5 / 115)  # the unsnapped size: 13 % below alpha on average
    method, folds = calibration_folds(200, 0.2, 0.05, seed=0)
    assert method == "holdout" and len(folds[0][1]) == 39  # (39 + 1) * 0.05 = 2 exactly


def test_cross_conformal_p_value_by_hand():
    from normalcy.calibration.conformal import cross_conformal_p_values

    folds = [np.array([1.0, 2.0, 3.0]), np.array([10.0, 20.0])]
    # item scored 2.5 by fold model 0 (1 score >= 2.5) and 15 by fold model 1 (1 score >= 15): (1 + 2) / 6
    np.testing.assert_allclose(cross_conformal_p_values(folds, [np.array([2.5]), np.array([15.0])]), [3 / 6])
    cal = Calibration(np.concatenate(folds), method="cross-conformal", fold_scores=folds)
    np.testing.assert_allclose(cal.p_values(np.array([0.0]), [np.array([2.5]), np.array([15.0])]), [0.5])
    np.testing.assert_allclose(cal.p_values(np.array([2.5])), [4 / 6])  # without fold scores: pooled (old rule)


def _realized_fpr(n_fit: int, repeats: int, alphas=(0.01, 0.05), dim: int = 4) -> dict:
    """Mean realized FPR of KNN over fresh exchangeable normal draws (fit on n_fit, test on 2000)."""
    from normalcy.detectors import create_detector

    rates = {a: [] for a in alphas}
    for r in range(repeats):
        rng = np.random.default_rng(100 + r)
        det = create_detector("knn", alpha=0.05, seed=r).fit(rng.standard_t(5, size=(n_fit, dim)))
        result = det.score(rng.standard_t(5, size=(2000, dim)))
        for a in alphas:
            rates[a].append(np.mean([q.is_anomaly for q in det.decide(result, alpha=a)]))
    return {a: float(np.mean(v)) for a, v in rates.items()}


def test_exchangeable_holdout_realizes_alpha_over_many_splits():
    """500 normals: a 99-score hold-out; the mean false-alarm rate over 60 splits is alpha (not 13 % below)."""
    rates = _realized_fpr(500, 60)
    assert abs(rates[0.05] - 0.05) < 0.006 and abs(rates[0.01] - 0.01) < 0.003, rates


def test_small_sample_cross_conformal_realizes_alpha(monkeypatch):
    """60 normals, cross-conformal forced: 5 kept fold models decide (the refitted-on-all model gave ~0.04)."""
    from normalcy.calibration import conformal

    monkeypatch.setattr(conformal, "MIN_TRAIN_SHARE", 0.0)
    assert calibration_folds(60, 0.2, 0.05, seed=0)[0] == "cross-conformal"
    rates = _realized_fpr(60, 150, alphas=(0.05,))
    assert abs(rates[0.05] - 3 / 61) < 0.005, rates


def test_small_sample_stretched_holdout_is_exact():
    """60 normals at alpha 0.05: a 19-score hold-out (41 left to train) has mean false-alarm rate exactly 1/20."""
    method, folds = calibration_folds(60, 0.2, 0.05, seed=0)
    assert method == "holdout" and len(folds[0][1]) == 19 and len(folds[0][0]) == 41
    assert calibration_folds(37, 0.2, 0.05, seed=0)[0] == "cross-conformal"  # 19 would leave under half to train
    assert len(calibration_folds(300, 0.2, 0.01, seed=0)[1][0][1]) == 99
    rates = _realized_fpr(60, 150, alphas=(0.05,))
    assert abs(rates[0.05] - 0.05) < 0.01, rates  # sd of one fit's rate is 0.048: 150 fits give SE 0.004


def test_p_interval_and_uncertain_status():
    from normalcy.calibration.uncertainty import decision_status, p_interval

    lo, hi = p_interval(np.array([0, 3, 50]), 99, level=0.9)
    assert lo[0] == 0 and hi[0] == pytest.approx(1 - 0.05 ** (1 / 99))  # Clopper-Pearson with no exceedance
    assert lo[1] < 0.04 < hi[1] and lo[2] < 0.5 < hi[2]
    p = np.array([1, 4, 51]) / 100
    assert decision_status(p, lo, hi, alpha=0.05) == ["anomalous", "uncertain", "normal"]
    # coverage: the interval holds the true tail probability in about 90 % of calibration draws
    rng = np.random.default_rng(0)
    hits = []
    for _ in range(400):
        counts = rng.binomial(99, 0.05)
        a, b = p_interval(np.array([counts]), 99)
        hits.append(a[0] <= 0.05 <= b[0])
    assert np.mean(hits) >= 0.88
    # the interval is the Beta quantile pair of Clopper-Pearson, as scipy.stats.beta states it
    from scipy import stats

    c = np.arange(1, 99)
    lo, hi = p_interval(c, 99, level=0.9)
    np.testing.assert_allclose(lo, stats.beta.ppf(0.05, c, 100 - c), rtol=1e-9)
    np.testing.assert_allclose(hi, stats.beta.ppf(0.95, c + 1, 99 - c), rtol=1e-9)


def test_every_row_says_when_alpha_is_unreachable():
    from normalcy.detectors import create_detector

    rng = np.random.default_rng(0)
    with pytest.warns(UserWarning, match="nothing can be flagged"):
        det = create_detector("knn", alpha=0.01).fit(rng.normal(size=(30, 3)))
    rows = [q.to_dict() for q in det.predict(rng.normal(size=(4, 3)) + 10.0)]
    assert all("alpha=0.01 unreachable" in r["calibration_note"] and not r["is_anomaly"] for r in rows)
    rows = [q.to_dict() for q in det.predict(rng.normal(size=(4, 3)) + 10.0, alpha=0.05)]
    assert all(r["calibration_note"] == "" and r["is_anomaly"] and r["p_interval"][0] == 0.0 for r in rows)
