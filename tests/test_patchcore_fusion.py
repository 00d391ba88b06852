"""PatchCore's positional fusion: NN distance + per-position Gaussian, each z-scored on held-out normal images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from normalcy.detectors import create_detector
from normalcy.detectors.image import patchcore as pc_module
from normalcy.detectors.image.patchcore import split_holdout
from normalcy.errors import ParameterError
from normalcy.store import load

SMALL = {"image_size": 64, "progress": False, "seed": 0, "calibration_fraction": 0.0}


def test_split_holdout_is_disjoint_seeded_and_covers_everything():
    items = list(range(20))
    fit, held = split_holdout(items, 0.2, seed=3)
    assert len(held) == 4 and sorted(fit + held) == items and not set(fit) & set(held)
    assert split_holdout(items, 0.2, seed=3) == (fit, held)
    assert split_holdout([1, 2, 3], 0.2, seed=0) == ([1, 2, 3], [1, 2, 3])  # too few to hold any out


def test_fusion_is_invariant_to_a_terms_scale(normal_images, test_images, monkeypatch):
    images, labels = test_images
    base = create_detector("patchcore", positional=True, standardize=True, **SMALL).fit(normal_images)
    ref = base.score(images)
    original = pc_module.position_distances
    monkeypatch.setattr(pc_module, "position_distances", lambda *a: 1000.0 * original(*a) + 7.0)
    scaled = create_detector("patchcore", positional=True, standardize=True, **SMALL).fit(normal_images)
    out = scaled.score(images)
    assert np.allclose(out.scores, ref.scores, rtol=1e-4, atol=1e-4)
    assert all(np.allclose(a, b, rtol=1e-4, atol=1e-4) for a, b in zip(out.maps, ref.maps))
    assert out.scores[labels == 1].min() > out.scores[labels == 0].max()


def test_held_out_images_are_not_in_the_bank(normal_images):
    det = create_detector("patchcore", positional=True, coreset_ratio=1.0, **SMALL).fit(normal_images)
    fit, held = split_holdout(normal_images, det.holdout, det.seed)
    assert det.memory_bank_.shape[0] == det.collect_patches(fit).shape[0]
    # the normalizers describe the held-out images' distances: their NN term averages mu_nn
    f = torch.cat([feats for feats, _, _ in det.iter_features(held)])
    assert float(det._nn_maps(f)[0].mean()) == pytest.approx(float(det._fusion[0]), rel=1e-4)


def test_fused_model_roundtrips_and_rejects_reweight(normal_images, test_images, tmp_path):
    images, _ = test_images
    det = create_detector("patchcore", positional=True, standardize=True, **SMALL).fit(normal_images)
    again = load(det.save(tmp_path / "m.normalcy"))
    assert np.allclose(again.score(images).scores, det.score(images).scores, rtol=1e-5)
    with pytest.raises(ParameterError, match="reweight"):
        create_detector("patchcore", positional=True, reweight=True, **SMALL).fit(normal_images)
