"""PatchCore's `crossfit`: every fit image in the bank and the Gaussian, fusion normalizers cross-fitted over folds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from normalcy.detectors import create_detector
from normalcy.detectors.image.padim import fit_position_gaussian, position_distances
from normalcy.detectors.image.patchcore import crossfit_folds, fusion_stats
from normalcy.store import _rebuild, load, read_file

SMALL = {"image_size": 64, "progress": False, "seed": 0, "calibration_fraction": 0.0, "coreset_ratio": 1.0}


def test_crossfit_folds_are_seeded_balanced_and_cover_every_image():
    folds = crossfit_folds(23, 0.2, seed=4)
    assert sorted(np.unique(folds)) == [0, 1, 2, 3, 4] and np.bincount(folds).min() >= 4
    assert np.array_equal(crossfit_folds(23, 0.2, seed=4), folds)
    assert not np.array_equal(crossfit_folds(23, 0.2, seed=5), folds)
    assert crossfit_folds(6, 0.9, seed=0).max() == 1  # at least two folds
    assert crossfit_folds(3, 0.1, seed=0).max() == 2  # never more folds than images


def test_crossfit_bank_and_gaussian_hold_every_image(normal_images, test_images, tmp_path):
    images, labels = test_images
    det = create_detector("patchcore", crossfit=True, **SMALL).fit(normal_images)
    assert det.memory_bank_.shape[0] == det.collect_patches(normal_images).shape[0]
    feats = torch.cat([f for f, _, _ in det.iter_features(normal_images)])
    mean, _ = fit_position_gaussian([det._stats.apply(feats, dim=1)], det._position[0], 0.01)
    assert torch.allclose(det._position[1], mean, atol=1e-4)
    out = det.score(images)
    assert out.scores[labels == 1].min() > out.scores[labels == 0].max()
    again = load(det.save(tmp_path / "m.normalcy"))
    assert again.crossfit is True
    assert np.allclose(again.score(images).scores, out.scores, rtol=1e-5)


def test_crossfit_normalizers_come_from_images_outside_the_bank_that_scored_them(normal_images):
    det = create_detector("patchcore", crossfit=True, **SMALL).fit(normal_images)
    loaded = [(det._stats.apply(f, dim=1), v) for f, _, v in det.iter_features(normal_images)]
    feats, valid = torch.cat([f for f, _ in loaded]), torch.cat([v for _, v in loaded])
    folds = torch.from_numpy(crossfit_folds(len(normal_images), det.holdout, det.seed))
    chans = det._position[0]
    cells = []
    for k in range(int(folds.max()) + 1):  # by hand: each fold against all patches of the other folds, exactly
        out, inside = feats[folds != k], feats[folds == k]
        bank = out.permute(0, 2, 3, 1)[valid[folds != k]]
        q = inside.permute(0, 2, 3, 1)
        nn = torch.cdist(q.reshape(-1, q.shape[-1]), bank).min(1).values.view(q.shape[:3])
        pos = position_distances(inside, chans, *fit_position_gaussian([out], chans, 0.01, det.position_shrinkage))
        cells.append((nn[valid[folds == k]], pos[valid[folds == k]]))
    assert torch.allclose(det._fusion, fusion_stats(cells), rtol=1e-3)
    assert float(det._fusion[0]) > 0.5  # the scored images were not in the bank (their own patches are at 0)


def test_crossfit_with_jitter_puts_every_copy_in_the_bank(normal_images):
    det = create_detector("patchcore", crossfit=True, intensity_jitter=True, intensity=None, **SMALL)
    det.fit(normal_images)
    assert det.memory_bank_.shape[0] == det.collect_patches(det._with_jitter(normal_images)).shape[0]


@pytest.mark.parametrize("params", [{"positional": False}, {"modes": "auto"}])
def test_crossfit_is_a_no_op_without_fusion_normalizers_to_measure(normal_images, params):
    a = create_detector("patchcore", crossfit=True, **params, **SMALL).fit(normal_images)
    b = create_detector("patchcore", crossfit=False, **params, **SMALL).fit(normal_images)
    assert torch.equal(torch.as_tensor(np.asarray(a.memory_bank_)), torch.as_tensor(np.asarray(b.memory_bank_)))


def test_a_file_saved_before_crossfit_existed_loads_as_before(normal_images, test_images, tmp_path):
    images, _ = test_images
    det = create_detector("patchcore", **SMALL).fit(normal_images)
    path = det.save(tmp_path / "old.normalcy")
    meta, arrays = read_file(path)
    del meta["params"]["crossfit"]  # as written before the parameter existed
    old = _rebuild(path, meta, arrays, check_backbone=True)
    assert old.crossfit is False
    assert np.allclose(old.score(images).scores, det.score(images).scores, rtol=1e-5)
