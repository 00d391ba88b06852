"""Contract tests over every registered vector detector (fit/score, errors, params, calibration, state)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from normalcy.detectors.estimator import clone
from normalcy.detectors.vector import NUMERIC_DETECTORS, VECTOR_DETECTORS, create_vector_detector, vector_detector_class
from normalcy.errors import NotFittedError, ParameterError, ShapeError
from normalcy.metrics import auroc

FAST = {"autoencoder": {"epochs": 25, "max_seconds": 20.0}, "iforest": {"n_estimators": 50}}


def make(name: str, **params):
    return create_vector_detector(name, **{**FAST.get(name, {}), **params})


def blobs(seed: int, n: int, d: int = 5) -> np.ndarray:
    """Two correlated Gaussian clusters: normal data with some structure."""
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(99).normal(size=(d, d)) / np.sqrt(d) + np.eye(d)
    centers = np.stack([np.zeros(d), np.full(d, 3.0)])
    return centers[rng.integers(0, 2, n)] + rng.normal(size=(n, d)) @ mix


@pytest.fixture(scope="module")
def data():
    normal = blobs(0, 500)  # 100 calibration rows: one holdout fit, no cross-fitting
    test_normal = blobs(1, 60)
    rng = np.random.default_rng(2)
    outliers = rng.normal(size=(20, 5))
    outliers = 1.5 + 9.0 * outliers / np.linalg.norm(
        outliers, axis=1, keepdims=True
    )  # far from both clusters
    X_test = np.vstack([test_normal, outliers])
    y_test = np.r_[np.zeros(60), np.ones(20)]
    return normal, X_test, y_test


def categorical_data(seed: int, n: int) -> np.ndarray:
    """Column b follows column a (pairs), c is independent; values are strings."""
    rng = np.random.default_rng(seed)
    a = rng.choice(["red", "green", "blue"], n)
    b = np.where(a == "red", "circle", np.where(a == "green", "square", "triangle"))
    c = rng.choice(["x", "y"], n)
    return np.stack([a, b, c], axis=1).astype(object)


def fit_and_test(name: str, data):
    normal, X_test, y_test = data
    if name == "categorical":
        normal = categorical_data(0, 500)
        test_normal = categorical_data(1, 60)
        odd = categorical_data(2, 20)
        odd[:10, 1] = np.where(odd[:10, 0] == "red", "square", "circle")  # broken pairing
        odd[10:, 0] = "purple"  # unseen value
        return make(name).fit(normal), np.vstack([test_normal, odd]), y_test
    if name == "mixed":
        cats = categorical_data(0, 500)
        mixed_normal = np.concatenate([normal.astype(object), cats], axis=1)
        test_cats = categorical_data(1, 80)
        test_cats[60:70, 1] = "hexagon"
        X = np.concatenate([X_test.astype(object), test_cats], axis=1)
        X[70:, :5] = X[:10, :5]  # last 10 anomalies only numerically normal... but categorically odd below
        X[70:, 5] = "purple"
        return make(name).fit(mixed_normal), X, y_test
    return make(name).fit(normal), X_test, y_test


@pytest.mark.parametrize("name", sorted(VECTOR_DETECTORS))
def test_fit_score_separates(name, data):
    det, X_test, y_test = fit_and_test(name, data)
    assert det.n_features_in_ == X_test.shape[1]
    assert all(k.endswith("_") for k in det._fitted_attributes())
    scores = det.score(X_test).scores
    assert scores.shape == (len(X_test),) and np.isfinite(scores).all()
    assert auroc(y_test, scores) > 0.9, "higher score must mean more anomalous on obvious outliers"
    again = clone(det).fit(det_fit_data(name, data)).score(X_test).scores
    np.testing.assert_array_equal(again, scores)  # deterministic with a seed


def det_fit_data(name, data):
    normal = data[0]
    if name == "categorical":
        return categorical_data(0, 500)
    if name == "mixed":
        return np.concatenate([normal.astype(object), categorical_data(0, 500)], axis=1)
    return normal


@pytest.mark.parametrize("name", sorted(VECTOR_DETECTORS))
def test_not_fitted_and_params(name):
    det = make(name)
    with pytest.raises(NotFittedError):
        det.score(np.zeros((3, 5)))
    params = det.get_params()
    assert {"alpha", "calibration_fraction", "seed"} <= set(params)
    assert params["alpha"] == 0.05 and params["calibration_fraction"] == 0.2 and params["seed"] == 0
    assert type(det)(**params).get_params() == params
    det.set_params(seed=7)
    assert det.get_params()["seed"] == 7
    with pytest.raises(ParameterError):
        det.set_params(no_such_parameter=1)


@pytest.mark.parametrize("name", NUMERIC_DETECTORS)
def test_input_errors(name, data):
    normal = data[0]
    det = make(name, alpha=0.05).fit(normal[:200])
    with pytest.raises(ShapeError, match="fitted on 5 features but X has 4"):
        det.score(normal[:10, :4])
    bad = normal[:10].copy()
    bad[3, 2] = np.nan
    with pytest.raises(ShapeError, match="NaN"):
        det.score(bad)
    with pytest.raises(ShapeError, match="NaN"):
        make(name, alpha=0.05).fit(np.vstack([normal[:50], bad]))
    with pytest.raises(ShapeError, match="2-D"):
        make(name).fit(normal[:, 0])
    with pytest.raises(ShapeError, match="non-numeric"):
        make(name).fit(np.array([["a", 1.0], ["b", 2.0], ["c", 3.0]], dtype=object))


@pytest.mark.parametrize("name", sorted(VECTOR_DETECTORS))
def test_state_round_trip(name, data):
    det, X_test, _ = fit_and_test(name, data)
    arrays = {k: np.array(v) for k, v in det._state_arrays().items()}
    assert all(isinstance(v, np.ndarray) and v.dtype != object for v in arrays.values())
    meta = json.loads(json.dumps(det._state_meta()))  # must be JSON-able
    fresh = vector_detector_class(name)(**det.get_params())
    fresh._load_state(arrays, meta)
    np.testing.assert_array_equal(fresh.score(X_test).scores, det.score(X_test).scores)


@pytest.mark.parametrize("name", NUMERIC_DETECTORS)
def test_calibrated_false_alarm_rate(name):
    normal = blobs(10, 1000)
    fresh = blobs(11, 600)
    det = make(name).fit(normal)
    assert det.calibration_.method == "holdout" and det.calibration_.n == 199  # 200 snapped: n + 1 a multiple of 100
    preds = det.predict(fresh, alpha=0.05)
    p = np.array([q.p_value for q in preds])
    assert ((p > 0) & (p <= 1)).all()
    fpr = np.mean([q.is_anomaly for q in preds])
    assert 0.01 <= fpr <= 0.11, f"realized false-alarm rate {fpr:.3f} far from alpha=0.05"


def test_registry_errors():
    with pytest.raises(ParameterError, match="known"):
        create_vector_detector("nope")


def test_knn_matches_brute_force_all_backends():
    from normalcy.detectors.vector.neighbors import knn_distances

    rng = np.random.default_rng(0)
    ref, q = rng.normal(size=(300, 20)) * 50 + 1000, rng.normal(size=(40, 20)) * 50 + 1000
    exact = np.sort(np.linalg.norm(q[:, None] - ref[None], axis=2), axis=1)[:, :4]
    for backend in ("torch", "kdtree"):
        got = knn_distances(q, ref, 4, memory_mb=0.01, backend=backend)  # tiny budget: many blocks
        np.testing.assert_allclose(got, exact, rtol=1e-9, atol=1e-9)


def test_knn_methods_and_small_fit():
    X = blobs(0, 30)
    for method in ("mean", "largest", "median"):
        s = make("knn", method=method, n_neighbors=50, alpha=0.1).fit(X).score(X[:3]).scores  # k clipped
        assert np.isfinite(s).all()
    with pytest.raises(ParameterError):
        make("knn", method="sum").fit(X)


def test_iforest_equals_sklearn_scores():
    from sklearn.ensemble import IsolationForest

    X = blobs(0, 500)
    det = make("iforest", n_estimators=100, trees="sklearn")
    det._fit(X)
    ref = IsolationForest(random_state=0).fit(X)
    np.testing.assert_allclose(det.score(X[:100]).scores, -ref.score_samples(X[:100]), rtol=1e-12)
    sub = make("iforest", max_features=0.6, n_estimators=30, trees="sklearn")
    sub._fit(X)
    ref = IsolationForest(random_state=0, max_features=0.6, n_estimators=30).fit(X)
    np.testing.assert_allclose(sub.score(X[:100]).scores, -ref.score_samples(X[:100]), rtol=1e-12)


def test_numpy_forest_is_an_isolation_forest():
    """The numpy-grown forest: valid trees (every sample in exactly one leaf, depth limit kept), and the same
    ranking quality as scikit-learn's forest on the same data."""
    from sklearn.ensemble import IsolationForest

    from normalcy.detectors.vector.isolation import grow_forest
    from normalcy.metrics import auroc

    X = blobs(0, 600)
    X[:, 3] = np.round(X[:, 3])  # a discrete column: constant inside many nodes
    X[:, 4] = 1.0  # a constant column: never split on
    flat, depth = grow_forest(X, 20, 256, X.shape[1], np.random.default_rng(0))
    assert depth == 8 and flat["roots"].tolist() == list(range(20))
    internal = flat["left"] != np.arange(flat["left"].size)
    assert not (flat["feature"][internal] == 4).any()
    assert (flat["leaf_value"][~internal] > 0).all() and (flat["leaf_value"][internal] == 0).all()
    test = np.vstack([blobs(1, 200), blobs(2, 50) * 3 + 6])
    y = np.r_[np.zeros(200), np.ones(50)]
    ours = make("iforest", alpha=0.05).fit(X).score(test).scores
    ref = -IsolationForest(random_state=0).fit(X).score_samples(test)
    assert abs(auroc(y, ours) - auroc(y, ref)) < 0.02
    sub = make("iforest", max_features=2, n_estimators=10, alpha=0.1).fit(X)
    assert np.isfinite(sub.score(test).scores).all()


def test_constant_columns_are_harmless():
    X = blobs(0, 200)
    X[:, 2] = 4.0
    for name in NUMERIC_DETECTORS:
        s = make(name, alpha=0.05).fit(X).score(X[:20]).scores
        assert np.isfinite(s).all(), name


def test_autoencoder_time_budget_and_early_stop():
    X = blobs(0, 300)
    det = make("autoencoder", epochs=500, patience=3, max_seconds=3.0)
    det._fit(X)  # the training loop alone, without calibration folds
    assert det.epochs_run_ < 500
