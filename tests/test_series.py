"""Series windowing, score mapping, detector, range-aware metric on hand-made cases, NAB reader."""

from __future__ import annotations

import json

import numpy as np
import pytest

from normalcy.detectors.series import (
    SeriesDetector,
    composite_f1,
    label_events,
    past_knn_distances,
    read_nab,
    series_metrics,
    sliding_windows,
    window_to_point_scores,
)
from normalcy.errors import ParameterError, ShapeError


def test_sliding_windows_univariate_and_multivariate():
    rows, starts = sliding_windows(np.arange(10.0), window=4, step=3)
    assert starts.tolist() == [0, 3, 6]
    np.testing.assert_array_equal(rows[1], [3, 4, 5, 6])
    rows, starts = sliding_windows(np.arange(10.0), window=4, step=4)
    assert starts.tolist() == [0, 4, 6]  # the end is always covered
    multi = np.stack([np.arange(6.0), 10 * np.arange(6.0)], axis=1)
    rows, starts = sliding_windows(multi, window=2)
    np.testing.assert_array_equal(rows[0], [0, 0, 1, 10])  # time-major: (t0 c0, t0 c1, t1 c0, t1 c1)
    rows, starts = sliding_windows(np.array([1.0, 2, 4, 7, 11]), window=2, difference=1)
    np.testing.assert_array_equal(rows, [[1, 2], [2, 3], [3, 4]])
    assert starts.tolist() == [1, 2, 3]  # differenced value at t belongs to timestamp t
    with pytest.raises(ShapeError, match="too short"):
        sliding_windows(np.arange(3.0), window=5)
    with pytest.raises(ShapeError, match="NaN"):
        sliding_windows(np.array([1.0, np.nan, 2.0]), window=2)


def test_window_to_point_scores():
    out = window_to_point_scores(np.array([1.0, 5.0, 2.0]), np.array([0, 1, 2]), window=2, n=4)
    np.testing.assert_array_equal(out, [1, 5, 5, 2])
    mean = window_to_point_scores(
        np.array([1.0, 5.0, 2.0]), np.array([0, 1, 2]), window=2, n=5, reduce="mean"
    )
    np.testing.assert_allclose(mean[:4], [1, 3, 3.5, 2])
    assert np.isnan(mean[4])


def test_label_events_and_composite_f1_hand_made():
    y = np.array([0, 1, 1, 1, 0, 0, 0, 1, 1, 0])
    assert label_events(y) == [(1, 4), (7, 9)]
    # one point of each event flagged, nothing else: event recall 1, point precision 1 -> F1 1
    s = np.array([0, 0, 9, 0, 0, 0, 0, 0, 9, 0.0])
    assert composite_f1(y, s)["f1"] == pytest.approx(1.0)
    # only the first event, with one point: recall 1/2, precision 1 -> 2/3 (point adjustment would claim more)
    s = np.array([0, 9, 0, 0, 0, 0, 0, 0, 0, 0.0])
    r = composite_f1(y, s)
    assert r["f1"] == pytest.approx(2 / 3) and r["recall"] == 0.5 and r["precision"] == 1.0
    # a false alarm outside events ranks first: best is still to flag 2 points incl. it? check exact value
    s = np.array([0, 5, 0, 0, 0, 9, 0, 0, 4, 0.0])
    # thresholds 9 -> P0 R0; 5 -> P1/2 R1/2 (F .5); 4 -> P2/3 R1 (F .8)
    assert composite_f1(y, s)["f1"] == pytest.approx(0.8)
    m = series_metrics(y, s)
    assert set(m) == {"auroc", "aupr", "event_f1"} and 0 <= m["auroc"] <= 1


def sine(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return np.sin(2 * np.pi * t / 50) + 0.05 * rng.normal(size=n)


def test_series_detector_finds_injected_anomaly():
    train = sine(1500, 0)
    test = sine(600, 1)
    test[300:310] += 2.0
    y = np.zeros(600, dtype=int)
    y[300:310] = 1
    det = SeriesDetector(window=20, step=2, alpha=0.05).fit(train)
    assert det.calibration_.method == "holdout"
    scores = det.score(test).scores
    assert scores.shape == (600,) and np.isfinite(scores).all()
    m = series_metrics(y, scores)
    assert m["auroc"] > 0.9 and m["event_f1"] > 0.5
    preds = det.predict(test[:100], alpha=0.05)
    assert len(preds) == 100 and all(0 < p.p_value <= 1 for p in preds)
    fresh = SeriesDetector(**det.get_params())
    fresh._load_state(
        {k: np.array(v) for k, v in det._state_arrays().items()}, json.loads(json.dumps(det._state_meta()))
    )
    np.testing.assert_array_equal(fresh.score(test).scores, scores)
    with pytest.raises(ShapeError, match="channel"):
        det.score(np.stack([test, test], axis=1))


def test_multivariate_with_differencing():
    a, b = sine(800, 0), sine(800, 2)
    train = np.stack([a, b], axis=1)
    det = SeriesDetector(window=10, difference=1, detector="mahalanobis", alpha=0.1).fit(train)
    test = np.stack([sine(300, 3), sine(300, 4)], axis=1)
    test[150, 1] += 3
    s = det.score(test).scores
    assert s[150] == s.max() and s[:120].max() < s.max()  # every window covering the spike scores it


def test_past_knn_distances_match_brute_force():
    Z = np.random.default_rng(0).normal(size=(40, 3))
    d = past_knn_distances(Z, k=3, exclusion=5, memory_mb=0.001)  # tiny budget: many query blocks
    for i in range(40):
        past = np.sort(np.linalg.norm(Z[: max(i - 5 + 1, 0)] - Z[i], axis=1))[:3]
        expected = np.concatenate([past, np.full(3 - len(past), np.inf)])
        np.testing.assert_allclose(d[i], expected, rtol=1e-9)


def test_past_memory_flags_a_level_shift_once():
    train = sine(600, 0)
    test = sine(900, 1)
    test[300:] += 3.0  # a new level that persists
    scores = {m: SeriesDetector(window=20, memory=m).fit(train).score(test).scores for m in ("fit", "past")}
    # fitted windows only: the whole new level stays anomalous
    assert scores["fit"][800:].min() > 3 * np.median(scores["fit"][:250])
    # with the series' own past: the onset is flagged, the level is normal once it has been seen
    past = scores["past"]
    assert past[290:330].max() > 5 * np.median(past[:250])
    assert np.median(past[800:]) < 2 * np.median(past[:250])


def test_past_memory_scoring_the_fitted_series_further_on():
    """Scoring a series that starts with the fit stretch counts each fitted window once (its own past)."""
    full = sine(700, 3)
    det = SeriesDetector(window=10, calibration_fraction=0.0).fit(full[:400])
    assert det._memory() == "past" and det.detector_.n_neighbors == 2
    got = det.score(full).scores
    rows, _ = sliding_windows(full, 10)
    knn = det.detector_
    Z = (rows - knn.center_) / knn.scale_
    inside = 400 - 10 + 1  # windows wholly inside the fit stretch are scored against the fit
    brute = [np.sort(np.linalg.norm(Z[: i - 10 + 1] - Z[i], axis=1))[:2].mean() for i in range(inside, len(Z))]
    expected = window_to_point_scores(np.array(brute), np.arange(inside, len(Z)), 10, 700)
    np.testing.assert_allclose(got[420:], expected[420:], rtol=1e-9)


def test_past_memory_after_a_fit_stretch_shorter_than_two_windows():
    full = sine(300, 4)
    det = SeriesDetector(window=30, calibration_fraction=0.0).fit(full[:45])  # 16 fitted windows, none "past" yet
    assert np.isfinite(det.score(full).scores).all()


def test_memory_choices_and_old_models():
    with pytest.raises(ParameterError, match="memory='past' needs detector='knn'"):
        SeriesDetector(window=10, detector="pca", memory="past").fit(sine(300, 0))
    assert SeriesDetector(window=10, detector="pca").fit(sine(300, 0))._memory() == "fit"
    det = SeriesDetector(window=10).fit(sine(300, 0))
    arrays = {k: v for k, v in det._state_arrays().items() if k != "fit_series"}  # as saved before "past"
    old = SeriesDetector(**det.get_params())
    old._load_state(arrays, json.loads(json.dumps(det._state_meta())))
    assert old.memory == "fit" and old.detector_.n_neighbors == 5
    as_before = SeriesDetector(window=10, memory="fit", detector_params={"n_neighbors": 5}).fit(sine(300, 0))
    np.testing.assert_array_equal(old.score(sine(200, 1)).scores, as_before.score(sine(200, 1)).scores)


def test_read_nab(tmp_path):
    (tmp_path / "data" / "cat").mkdir(parents=True)
    (tmp_path / "labels").mkdir()
    rows = ["timestamp,value"] + [f"2014-01-01 00:{m:02d}:00,{m * 1.5}" for m in range(10)]
    (tmp_path / "data" / "cat" / "s.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "data" / "cat" / "other.csv").write_text("\n".join(rows) + "\n")
    windows = {"cat/s.csv": [["2014-01-01 00:03:00.000000", "2014-01-01 00:05:00.000000"]], "gone/x.csv": []}
    (tmp_path / "labels" / "combined_windows.json").write_text(json.dumps(windows))
    series = read_nab(tmp_path)
    assert [s.name for s in series] == ["cat/s.csv"]  # unlabelled files are skipped
    s = series[0]
    assert s.labels.tolist() == [0, 0, 0, 1, 1, 1, 0, 0, 0, 0] and s.values[2] == 3.0 and s.category == "cat"
