"""Decisions with few references: the transfer table (normalcy.calibration.transfer) and its use by few-shot."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from normalcy.calibration.transfer import TransferTable, load_table, map_statistic, save_tables
from normalcy.detectors import create_detector
from normalcy.errors import ModelFileError, ParameterError

SMALL = {"image_size": 64, "progress": False}


def test_map_statistic_is_scale_free_and_sees_a_spot():
    rng = np.random.default_rng(0)
    flat = rng.normal(1.0, 0.1, (40, 40))
    spot = flat.copy()
    spot[18:22, 18:22] += 2.0
    assert map_statistic(spot) > 3 * map_statistic(flat)
    assert map_statistic(10 * spot) == pytest.approx(map_statistic(spot))
    edge = flat.copy()
    edge[0, 0] = 100.0  # in the border band: does not decide
    assert map_statistic(edge) == pytest.approx(map_statistic(flat), rel=0.05)
    with pytest.raises(ParameterError):
        map_statistic(np.zeros(3))


def test_table_p_values_threshold_and_nearest_k(tmp_path):
    table = TransferTable("fewshot", {1: np.arange(1, 100), 4: np.arange(1, 100) / 2})
    p = table.p_values(np.array([0.0, 50.0, 1000.0]), 1)
    assert p[0] == 1.0 and p[2] == pytest.approx(1 / 100) and 0.4 < p[1] < 0.6
    assert table.nearest_k(3) == 4 and table.nearest_k(1) == 1 and table.nearest_k(100) == 4
    t = table.threshold(0.05, 1)
    assert (table.p_values(np.array([t + 1e-9]), 1) <= 0.05).all() and (table.p_values(np.array([t]), 1) > 0.05).all()
    assert table.threshold(0.001, 1) == np.inf  # 99 normals cannot reach 0.001
    path = save_tables([table], tmp_path / "t.json", meta={"command": "test"})
    back = load_table("fewshot", path)
    np.testing.assert_allclose(back.normals[4], table.normals[4])
    assert load_table("dictionary", path) is None
    (tmp_path / "bad.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ModelFileError, match="format"):
        load_table("fewshot", tmp_path / "bad.json")
    with pytest.raises(ModelFileError, match="does not exist"):
        load_table("fewshot", tmp_path / "missing.json")


def test_max_rule_is_as_strict_as_the_strictest_source(tmp_path):
    easy, hard = np.arange(1, 40) / 4.0, np.arange(1, 40).astype(float)  # an easy source cannot loosen the rule
    table = TransferTable("fewshot", {}, sources={"easy": {1: easy}, "hard": {1: hard}}, rule="max")
    pooled = TransferTable("fewshot", {1: np.concatenate([easy, hard])})
    np.testing.assert_allclose(table.normals[1], pooled.normals[1])  # pooled statistics follow from the sources
    z = np.array([5.0, 20.0, 38.5, 100.0])
    np.testing.assert_allclose(table.p_values(z, 1), np.maximum(TransferTable("h", {1: hard}).p_values(z, 1),
                                                                TransferTable("e", {1: easy}).p_values(z, 1)))
    t = table.threshold(0.05, 1)
    assert t == TransferTable("h", {1: hard}).threshold(0.05, 1) > pooled.threshold(0.05, 1)
    assert (table.p_values(np.array([t + 1e-9]), 1) <= 0.05).all() and (table.p_values(np.array([t]), 1) > 0.05).all()
    assert table.threshold(0.01, 1) == np.inf  # 39 normals per source cannot reach 0.01, whatever the pool holds
    back = load_table("fewshot", save_tables([table], tmp_path / "t.json"))
    assert back.rule == "max" and set(back.sources) == {"easy", "hard"}
    np.testing.assert_allclose(back.p_values(z, 1), table.p_values(z, 1))
    with pytest.raises(ParameterError, match="per-source"):
        TransferTable("fewshot", {1: hard}, rule="max")
    with pytest.raises(ParameterError, match="rule"):
        TransferTable("fewshot", {1: hard}, rule="mean")


def test_p_factor_asks_every_source_for_alpha_over_the_factor(tmp_path):
    sources = {"a": {1: np.arange(1, 200).astype(float)}, "b": {1: np.arange(1, 200) / 2.0}}
    plain = TransferTable("fewshot", {}, sources=sources, rule="max")
    safe = TransferTable("fewshot", {}, sources=sources, rule="max", p_factor=2.0)
    z = np.array([0.0, 150.0, 196.0, 500.0])
    np.testing.assert_allclose(safe.p_values(z, 1), np.minimum(1.0, 2 * plain.p_values(z, 1)))
    assert safe.threshold(0.05, 1) == plain.threshold(0.025, 1) > plain.threshold(0.05, 1)
    t = safe.threshold(0.05, 1)
    assert (safe.p_values(np.array([t + 1e-9]), 1) <= 0.05).all() and (safe.p_values(np.array([t]), 1) > 0.05).all()
    assert load_table("fewshot", save_tables([safe], tmp_path / "t.json")).p_factor == 2.0
    with pytest.raises(ParameterError, match="p_factor"):
        TransferTable("fewshot", {}, sources=sources, rule="max", p_factor=0.5)


def test_tables_without_sources_load_pooled(tmp_path):
    old = {"format": "normalcy-transfer-v1", "meta": {}, "tables": [{"detector": "fewshot", "meta": {},
                                                                    "normals": {"1": [1.0, 2.0, 3.0]}}]}
    (tmp_path / "old.json").write_text(json.dumps(old))
    table = load_table("fewshot", tmp_path / "old.json")
    assert table.rule == "pool" and not table.sources and table.p_factor == 1.0
    assert table.p_values(np.array([2.5]), 1)[0] == pytest.approx(2 / 4)


def _table_from(normal_images, tmp_path, rule="pool"):
    """A table learned the way the shipped one is: few-shot fitted on k normals, statistics of other normals
    (rule "max": two overlapping sources of seeds, standing in for two auxiliary datasets)."""
    normals, per_seed = {}, {}
    for k in (1, 2):
        stats = []
        for seed in range(3):
            refs = normal_images[seed * 2 : seed * 2 + k]
            det = create_detector("fewshot", **SMALL, calibration_fraction=0.0, transfer_table=None)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                det.fit(refs)
            per_seed[k, seed] = [map_statistic(m, det.border) for m in det.score(normal_images[6:]).maps]
            stats += per_seed[k, seed]
        normals[k] = np.array(stats)
    sources = {f"s{a}{b}": {k: np.array(per_seed[k, a] + per_seed[k, b]) for k in (1, 2)} for a, b in ((0, 1), (1, 2))}
    table = TransferTable("fewshot", normals) if rule == "pool" else TransferTable("fewshot", {}, sources=sources,
                                                                                   rule=rule)
    return save_tables([table], tmp_path / "table.json")


@pytest.mark.parametrize("rule", ["pool", "max"])
def test_one_reference_decides_with_the_transfer_table(normal_images, test_images, tmp_path, rule):
    images, labels = test_images
    path = _table_from(normal_images, tmp_path, rule)
    with pytest.warns(UserWarning, match="transfer"):
        det = create_detector("fewshot", **SMALL, transfer_table=str(path)).fit(normal_images[:1])
    preds = det.predict(images, alpha=0.1)
    assert all(p.calibration == "transfer" and np.isfinite(p.p_value) for p in preds)
    flagged = np.array([p.is_anomaly for p in preds])
    assert flagged[labels == 1].mean() >= 0.8 and flagged[labels == 0].mean() <= 0.5
    hit = next(p for p, f in zip(preds, flagged) if f)
    assert hit.mask is not None and hit.mask.any() and hit.to_dict()["calibration"] == "transfer"
    assert all(not p.mask.any() for p, f in zip(preds, flagged) if not f)


def test_transfer_off_or_enough_normals_is_conformal(normal_images, test_images, tmp_path):
    images, _ = test_images
    path = _table_from(normal_images, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        off = create_detector("fewshot", **SMALL, transfer_table=None).fit(normal_images[:1])
    assert all(p.calibration == "none" and np.isnan(p.p_value) for p in off.predict(images[:2]))
    many = [np.roll(im, s, axis=1) for s in range(0, 8, 4) for im in normal_images]  # 24 normals >= 20
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        det = create_detector("fewshot", **SMALL, transfer_table=str(path)).fit(many)
    assert det.transfer() is None
    assert all(p.calibration == "conformal" for p in det.predict(images[:2]))


def test_detector_without_a_table_warns_and_stays_conformal(normal_images, test_images, tmp_path):
    images, _ = test_images
    path = _table_from(normal_images, tmp_path)
    with pytest.warns(UserWarning, match="no transfer table"):
        det = create_detector("dictionary", **SMALL, transfer_table=str(path)).fit(normal_images[:3])
    assert all(p.calibration == "conformal" for p in det.predict(images[:2]))
