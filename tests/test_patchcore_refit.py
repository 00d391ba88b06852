"""PatchCore's `refit_holdout`: the normalizer images join the bank and the Gaussian after the normalizers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from normalcy.detectors import create_detector
from normalcy.detectors.image.padim import fit_position_gaussian
from normalcy.detectors.image.patchcore import split_holdout
from normalcy.store import load

SMALL = {"image_size": 64, "progress": False, "seed": 0, "calibration_fraction": 0.0, "coreset_ratio": 1.0}


def test_refit_keeps_the_normalizers_and_uses_every_image(normal_images, test_images, tmp_path):
    images, labels = test_images
    plain = create_detector("patchcore", refit_holdout=False, **SMALL).fit(normal_images)
    det = create_detector("patchcore", refit_holdout=True, **SMALL).fit(normal_images)
    # the normalizers were measured on the held-out images against the fit-only bank, as without the refit
    assert torch.allclose(det._fusion, plain._fusion)
    assert det.memory_bank_.shape[0] == det.collect_patches(normal_images).shape[0]  # every image's patches
    fit, held = split_holdout(normal_images, det.holdout, det.seed)
    assert plain.memory_bank_.shape[0] == det.collect_patches(fit).shape[0]
    feats = torch.cat([f for f, _, _ in det.iter_features(normal_images)])
    mean, _ = fit_position_gaussian([det._stats.apply(feats, dim=1)], det._position[0], 0.01)
    assert torch.allclose(det._position[1], mean, atol=1e-4)  # the Gaussian saw all images too
    out = det.score(images)
    assert out.scores[labels == 1].min() > out.scores[labels == 0].max()
    again = load(det.save(tmp_path / "m.normalcy"))
    assert np.allclose(again.score(images).scores, out.scores, rtol=1e-5)


@pytest.mark.parametrize("params", [{"positional": False}, {"modes": "auto"}])
def test_refit_is_a_no_op_without_held_out_images_in_use(normal_images, params):
    a = create_detector("patchcore", refit_holdout=True, **params, **SMALL).fit(normal_images)
    b = create_detector("patchcore", refit_holdout=False, **params, **SMALL).fit(normal_images)
    assert torch.equal(torch.as_tensor(np.asarray(a.memory_bank_)), torch.as_tensor(np.asarray(b.memory_bank_)))
