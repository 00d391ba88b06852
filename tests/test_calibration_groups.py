"""Group-conditional (Mondrian) calibration: given labels, modes found by k-means, model files."""

from __future__ import annotations

import numpy as np
import pytest

from normalcy.calibration.groups import find_modes
from normalcy.detectors import create_detector
from normalcy.errors import ParameterError


def two_variants(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Normals of two product variants: a tight one and a loose one (far apart), with their labels."""
    a = rng.normal(0.0, 0.5, size=(n, 3))
    b = rng.normal(20.0, 3.0, size=(n, 3))
    return np.concatenate([a, b]), np.array(["tight"] * n + ["loose"] * n)


def group_rates(groups_mode: str, repeats: int = 25, alpha: float = 0.05) -> dict[str, float]:
    """Mean realized FPR per variant over fresh draws, calibrated pooled / per given group / per found mode."""
    rates: dict[str, list[float]] = {"tight": [], "loose": []}
    for r in range(repeats):
        rng = np.random.default_rng(r)
        X, g = two_variants(rng, 400)
        kw = {"pooled": {}, "given": {"groups": g}, "auto": {"groups": "auto"}}[groups_mode]
        det = create_detector("knn", alpha=alpha, seed=r).fit(X, **kw)
        T, tg = two_variants(rng, 1000)
        pred_kw = {"groups": tg} if groups_mode == "given" else {}
        flagged = np.array([q.is_anomaly for q in det.predict(T, alpha=alpha, **pred_kw)])
        for label in rates:
            rates[label].append(flagged[tg == label].mean())
    return {k: float(np.mean(v)) for k, v in rates.items()}


def test_pooled_calibration_lets_one_variant_eat_the_budget():
    rates = group_rates("pooled")
    assert rates["loose"] > 0.08 and rates["tight"] < 0.02, rates


@pytest.mark.parametrize("mode", ["given", "auto"])
def test_each_group_gets_its_own_false_alarm_rate(mode):
    rates = group_rates(mode)
    assert all(abs(v - 0.05) < 0.012 for v in rates.values()), rates


def test_find_modes_splits_only_separated_modes():
    rng = np.random.default_rng(0)
    X, g = two_variants(rng, 300)
    labels, model = find_modes(X, min_size=19)
    assert model is not None and len(set(labels)) == 2
    assert all(len(set(labels[g == v])) == 1 for v in ("tight", "loose"))  # each variant is one mode
    labels, model = find_modes(rng.normal(size=(600, 3)), min_size=19)
    assert model is None and set(labels) == {"mode0"}


def test_groups_errors_and_round_trip(tmp_path):
    from normalcy.store import load

    rng = np.random.default_rng(1)
    X, g = two_variants(rng, 200)
    with pytest.raises(ParameterError, match="one label per item"):
        create_detector("knn", alpha=0.05).fit(X, groups=g[:10])
    det = create_detector("knn", alpha=0.05).fit(X, groups=g)
    with pytest.raises(ParameterError, match="calibrated per group"):
        det.predict(X[:3])
    with pytest.raises(ParameterError, match="not seen"):
        det.predict(X[:1], groups=["other"])
    rows = [q.to_dict() for q in det.predict(X[:2], groups=["tight", "tight"])]
    assert rows[0]["group"] == "tight" and rows[0]["n_calibration"] == det.calibration_.groups["tight"].n
    again = load(det.save(tmp_path / "g.normalcy"))
    p_again = [q.p_value for q in again.predict(X[:5], groups=g[:5])]
    assert p_again == [q.p_value for q in det.predict(X[:5], groups=g[:5])]
    auto = create_detector("knn", alpha=0.05).fit(X, groups="auto")
    back = load(auto.save(tmp_path / "a.normalcy"))
    assert [q.group for q in back.predict(X[::50])] == [q.group for q in auto.predict(X[::50])]


def test_cross_conformal_fold_models_survive_a_model_file(tmp_path):
    from normalcy.store import load

    rng = np.random.default_rng(2)
    det = create_detector("knn", alpha=0.05).fit(rng.normal(size=(30, 3)))  # 19 scores would leave < half
    assert det.calibration_.method == "cross-conformal" and len(det.fold_states_) == 5
    T = rng.normal(size=(20, 3)) * 2
    again = load(det.save(tmp_path / "c.normalcy"))
    assert [q.p_value for q in again.predict(T)] == [q.p_value for q in det.predict(T)]
    assert np.allclose(again.score(T).scores, det.score(T).scores)
