"""The vector detectors as scikit-learn outlier detectors: check_estimator, Pipeline, GridSearchCV, sign rules."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from normalcy.detectors.vector import NUMERIC_DETECTORS, create_vector_detector
from normalcy.detectors.vector.knn import KNN
from normalcy.detectors.vector.sklearn_api import SklearnDetector

FAST = {"autoencoder": {"epochs": 3}, "iforest": {"n_estimators": 20}}
IN_SAMPLE = (
    "in-sample scores: a training row is its own nearest neighbour (knn) or pulled the fitted subspace/Gaussian "
    "towards itself (pca, mahalanobis), so at the conformal alpha=0.01 no TRAINING row is flagged, while this "
    "check expects fit_predict/predict on the training rows to flag some (it assumes a contamination rate)"
)
EXPECTED_FAILURES = {
    name: {"check_outliers_train": IN_SAMPLE, "check_outliers_fit_predict": IN_SAMPLE}
    for name in ("knn", "pca", "mahalanobis")
}
ESTIMATORS = [SklearnDetector(create_vector_detector(n, **FAST.get(n, {}))) for n in NUMERIC_DETECTORS]


def _expected(estimator: SklearnDetector) -> dict[str, str]:
    return EXPECTED_FAILURES.get(estimator.detector.name, {})


@parametrize_with_checks(ESTIMATORS, expected_failed_checks=_expected)
def test_sklearn_check_estimator(estimator, check):
    check(estimator)


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normal rows on very different column scales; anomalies are normal rows shifted by 8 sd in column 0."""
    rng = np.random.default_rng(seed)
    scale = np.array([1, 10, 100, 0.1])
    normal = rng.normal(size=(400, 4)) * scale
    test = rng.normal(size=(120, 4)) * scale
    test[100:, 0] += 8.0
    y = np.r_[np.ones(100), -np.ones(20)]  # scikit-learn's outlier labels: +1 inlier, -1 outlier
    return normal, test, y


def test_sign_conventions_match_native_api():
    normal, test, _ = _data()
    native = KNN().fit(normal)
    wrapped = SklearnDetector(KNN()).fit(normal)
    raw = native.score(test).scores
    np.testing.assert_allclose(wrapped.score_samples(test), -raw)
    flagged = np.array([p.is_anomaly for p in native.predict(test)])
    np.testing.assert_array_equal(wrapped.predict(test) == -1, flagged)
    np.testing.assert_array_equal(wrapped.decision_function(test) < 0, flagged)
    assert wrapped.offset_ == -native.calibration_.threshold(native.alpha)
    assert set(np.unique(SklearnDetector(KNN()).fit_predict(normal))) <= {-1, 1}


def test_pipeline_cross_val_and_grid_search():
    normal, test, y = _data()
    pipe = make_pipeline(StandardScaler(), SklearnDetector(KNN(scaling="none")))
    pipe.fit(normal)
    assert set(np.unique(pipe.predict(test))) == {-1, 1}
    assert (pipe.predict(test)[100:] == -1).mean() > 0.8
    X, labels = np.vstack([normal, test]), np.r_[np.ones(len(normal)), y]
    cv = StratifiedKFold(3, shuffle=True, random_state=0)
    scores = cross_val_score(pipe, X, labels, cv=cv, scoring="roc_auc")
    assert scores.shape == (3,) and (scores > 0.9).all()
    grid = GridSearchCV(pipe, {"sklearndetector__detector__n_neighbors": [1, 5, 20]}, cv=cv, scoring="roc_auc")
    grid.fit(X, labels)
    assert grid.best_params_["sklearndetector__detector__n_neighbors"] in (1, 5, 20)
    best = grid.best_params_["sklearndetector__detector__n_neighbors"]
    assert grid.best_estimator_[-1].detector_.n_neighbors == best


def test_errors_are_scikit_learn_errors():
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        SklearnDetector(KNN()).predict(np.zeros((2, 3)))
    det = SklearnDetector(KNN()).fit(np.random.default_rng(0).normal(size=(50, 3)))
    with pytest.raises(ValueError, match="features"):
        det.predict(np.zeros((2, 4)))
