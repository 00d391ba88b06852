"""Drift monitor: online conformal p-values are uniform without drift, the alarm stays quiet, and shifts are caught."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from normalcy.calibration.drift import ConformalMartingale, DriftMonitor, image_statistics, thin_index
from normalcy.errors import ParameterError


def test_online_p_values_are_uniform_without_drift():
    rng = np.random.default_rng(0)
    mart = ConformalMartingale(rng.normal(size=50), seed=1)
    p = np.array([mart.update(x) for x in np.round(rng.normal(size=2000), 1)])  # heavy ties: smoothing handles them
    assert stats.kstest(p, "uniform").pvalue > 0.01
    assert mart.n == 2000 and mart.n_reference == 50 and len(mart.bag) == 2050


def test_no_alarm_on_a_stream_without_drift():
    rng = np.random.default_rng(1)
    alarms = 0
    for seed in range(5):
        mon = DriftMonitor(rng.gamma(2.0, size=40), budget=0.01, seed=seed)
        n = 2000
        alarms += mon.update_many(rng.gamma(2.0, size=n), rng.normal(0.5, 0.05, n), rng.gamma(3.0, size=n)) is not None
    assert alarms == 0
    assert mon.threshold == pytest.approx(np.log10(5 / 0.01))  # 5 martingales share the budget


@pytest.mark.parametrize("which", ["score", "brightness", "sharpness"])
def test_shift_raises_the_alarm_soon_after_it_starts(which):
    rng = np.random.default_rng(2)
    n = 300
    base = {"score": rng.gamma(2.0, size=2 * n), "brightness": rng.normal(0.5, 0.05, 2 * n),
            "sharpness": rng.gamma(3.0, size=2 * n)}
    shift = {"score": 2.0, "brightness": -0.05, "sharpness": -2.0}[which]  # one sd (score/sharpness ~1.4/1.7 sd)
    base[which][n:] += shift
    mon = DriftMonitor(rng.gamma(2.0, size=40), budget=0.01, seed=3)
    at = mon.update_many(base["score"], base["brightness"], base["sharpness"])
    assert at is not None and n <= at < n + 100
    assert mon.alarm["statistic"] == which
    assert mon.alarm["direction"] == ("up" if shift > 0 else "down")


def test_jumper_recovers_after_a_long_quiet_period():
    """The capital does not sink so low during 5,000 quiet images that a later drift takes long to detect."""
    rng = np.random.default_rng(4)
    mon = DriftMonitor(budget=0.01, image_statistics=False, seed=0)
    mon.update_many(rng.normal(size=5000))
    assert mon.alarm is None
    at = mon.update_many(rng.normal(size=500) + 1.0)
    assert at is not None and at - 5000 < 150


def test_report_is_json_and_thinning_keeps_the_peak():
    rng = np.random.default_rng(5)
    mon = DriftMonitor(rng.normal(size=30), budget=0.05, seed=0)
    mon.update_many(rng.normal(size=1000), rng.normal(size=1000), rng.normal(size=1000))
    rep = json.loads(json.dumps(mon.report(max_points=50)))
    assert rep["n"] == 1000 and len(rep["index"]) == 50 and rep["index"][-1] == 999
    score = rep["statistics"][0]
    assert score["name"] == "score" and score["recent_n"] == 200 and 0 < score["recent_mean_p"] < 1
    up = score["directions"]["up"]
    assert max(up["series"]) == pytest.approx(up["peak_log10"], abs=1e-5)
    assert [s["name"] for s in rep["statistics"]] == ["score", "brightness", "sharpness"]
    assert sum(len(b) for b in thin_index(7, 3)) == 7 and thin_index(0, 3) == []


def test_image_statistics_follow_brightness_and_blur():
    rng = np.random.default_rng(6)
    img = rng.integers(0, 200, size=(300, 400, 3), dtype=np.uint8)
    b, s = image_statistics(img)
    b2, _ = image_statistics((img * 1.2).astype(np.uint8))
    blurred = (img.astype(float) + np.roll(img, 1, 0) + np.roll(img, 1, 1) + np.roll(img, 1, (0, 1))) / 4
    _, s2 = image_statistics(blurred.astype(np.uint8))
    assert 0 < b < b2 < 1 and s2 < s / 2
    assert image_statistics(img[..., 0])[0] == pytest.approx(img[..., 0].mean() / 255)


def test_bad_arguments_are_parameter_errors():
    with pytest.raises(ParameterError, match="budget"):
        DriftMonitor(budget=1.5)
    with pytest.raises(ParameterError, match="direction"):
        ConformalMartingale(direction="sideways")
    with pytest.raises(ParameterError, match="brightness"):
        DriftMonitor().update(1.0)
    with pytest.raises(ParameterError, match="finite"):
        ConformalMartingale().update(float("nan"))
    with pytest.raises(ParameterError, match="3×3"):
        image_statistics(np.zeros((2, 2)))


def test_no_bet_during_warmup():
    """With fewer than `warmup` known values the capital stays exactly 1 (p-values that coarse are mostly noise)."""
    mart = ConformalMartingale(range(10), warmup=30, seed=0)
    for x in range(100, 120):  # 20 new maxima: p-values as small as they get, but the bag holds < 30 values
        mart.update(x)
    assert mart.log_capital == 0.0
    mart.update(1000.0)
    assert mart.log_capital > 0
