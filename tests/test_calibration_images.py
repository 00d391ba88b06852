"""Calibration on an image detector: cross-conformal fold models, uncertainty fields, automatic groups."""

from __future__ import annotations

import numpy as np
from conftest import texture, with_defect

import normalcy


def test_cross_conformal_image_detector_and_model_file(tmp_path):
    rng = np.random.default_rng(0)
    det = normalcy.PaDiM(image_size=64, alpha=0.1, n_features=20, progress=False)
    det.fit([texture(rng) for _ in range(16)])  # a hold-out reaching 0.1 (9) would leave < half: 5 fold models
    assert det.calibration_.method == "cross-conformal" and len(det.fold_states_) == 5
    images = [texture(rng) for _ in range(3)] + [with_defect(texture(rng))[0]]
    preds = det.predict(images)
    rows = [p.to_dict() for p in preds]
    assert rows[-1]["is_anomaly"] and rows[-1]["decision"] in ("anomalous", "uncertain")
    assert all(r["n_calibration"] == 16 and 0 <= r["p_interval"][0] <= r["p_value"] <= 1 for r in rows)
    again = normalcy.load(det.save(tmp_path / "cc.normalcy"))
    assert [p.p_value for p in again.predict(images)] == [p.p_value for p in preds]


def test_auto_groups_find_two_image_variants():
    rng = np.random.default_rng(1)
    dark = [texture(rng) // 3 for _ in range(24)]
    bright = [np.clip(texture(rng).astype(int) + 100, 0, 255).astype(np.uint8) for _ in range(24)]
    det = normalcy.PaDiM(image_size=64, alpha=0.2, n_features=20, calibration_fraction=0.5, progress=False)
    det.fit(dark + bright, groups="auto")
    assert sorted(det.calibration_.groups) == ["mode0", "mode1"]
    groups = [p.group for p in det.predict([dark[0], bright[0]])]
    assert groups[0] != groups[1]
