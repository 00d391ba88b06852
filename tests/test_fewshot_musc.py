"""MuSc: the mostly-normal check (anomalous share, warning, fallback) and the reduced-width scoring."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import normalcy
from normalcy.detectors import create_detector
from normalcy.detectors.image.musc import anomalous_share
from normalcy.errors import ParameterError

SMALL = {"image_size": 64, "progress": False}


def test_anomalous_share_from_scores():
    rng = np.random.default_rng(0)
    mostly_bad = np.concatenate([rng.normal(1, 0.05, 10), rng.normal(5, 0.3, 30)])
    assert anomalous_share(mostly_bad) == pytest.approx(0.75, abs=0.03)
    assert anomalous_share(rng.normal(1, 0.1, 40)) == 0.0  # one mode: nothing stands out as a group
    assert np.isnan(anomalous_share(np.ones(5)))  # too few to tell


def test_repeated_defect_batch_warns_and_falls_back(normal_images, test_images):
    images, labels = test_images
    bad = images[int(np.flatnonzero(labels)[0])]
    # 9 of 12 images carry the same defect: under MuSc's rule they vouch for each other
    batch = list(normal_images[:3]) + [np.clip(bad.astype(int) + k, 0, 255).astype(np.uint8) for k in range(9)]
    truth = np.array([0] * 3 + [1] * 9)
    naive = create_detector("musc", **SMALL, max_anomalous_share=1.0).fit()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        naive_scores = naive.score(batch).scores  # no warning when the check is off
    det = create_detector("musc", **SMALL).fit()
    with pytest.warns(UserWarning, match="not mostly normal"):
        result = det.score(batch)
    assert det.anomalous_share_ > 0.5
    assert normalcy.metrics.auroc(truth, result.scores) > 0.95
    assert normalcy.metrics.auroc(truth, result.scores) > normalcy.metrics.auroc(truth, naive_scores)
    with pytest.raises(ParameterError, match="max_anomalous_share"):
        create_detector("musc", **SMALL, max_anomalous_share=0.0).fit().score(batch)


def test_mostly_normal_batch_does_not_warn(normal_images, test_images):
    images, _ = test_images
    batch = list(normal_images) + [images[7]]
    det = create_detector("musc", **SMALL).fit()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scores = det.score(batch).scores
    assert int(np.argmax(scores)) == len(batch) - 1 and not det.anomalous_share_ > 0.3


def test_reduce_projects_to_leading_axes():
    det = create_detector("musc", reduce_dim=4, seed=0)
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(3, 16, 5, 5, generator=gen)
    valid = torch.ones(3, 5, 5, dtype=torch.bool)
    out = det.reduce(feats, valid)
    assert out.shape == (3, 4, 5, 5)
    x = feats.permute(0, 2, 3, 1).reshape(-1, 16)
    y = out.permute(0, 2, 3, 1).reshape(-1, 4)
    exact = "donot_use_mm_for_euclid_dist"
    assert torch.cdist(y, y, compute_mode=exact).le(torch.cdist(x, x, compute_mode=exact) + 1e-4).all()  # 1-Lipschitz
    assert det.set_params(reduce_dim=None).reduce(feats, valid) is feats
    with pytest.raises(ParameterError, match="reduce_dim"):
        det.set_params(reduce_dim=0).reduce(feats, valid)


def test_reduced_and_full_width_agree_on_the_odd_image(normal_images, test_images):
    images, _ = test_images
    batch = list(normal_images[:9]) + [images[7]]
    for dim in (None, 16):
        scores = create_detector("musc", **SMALL, reduce_dim=dim).fit().score(batch).scores
        assert int(np.argmax(scores)) == 9


def test_gain_default_scores_a_batch_with_darker_images_alike(normal_images, test_images):
    images, _ = test_images
    even = [(im // 2) * 2 for im in [*normal_images[:4], images[7]]]  # even grey levels: halving them is exact
    mixed = [im // 2 if i % 2 else im for i, im in enumerate(even)]  # every other image at half the exposure
    det = create_detector("musc", **SMALL).fit()  # intensity="auto": every image gain-normalized first
    raw = create_detector("musc", **SMALL, intensity=None).fit()
    gained = np.abs(det.score(mixed).scores - det.score(even).scores).max()
    plain = np.abs(raw.score(mixed).scores - raw.score(even).scores).max()
    assert det._gain() and not raw._gain()
    assert gained < 0.1 * plain
    with pytest.raises(ParameterError, match="intensity"):
        create_detector("musc", **SMALL, intensity="equalize").fit().score(even)


def test_musc_files_from_before_the_gain_load_without_it(normal_images, tmp_path):
    from normalcy.store import _rebuild, read_file

    path = create_detector("musc", **SMALL).fit(normal_images).save(tmp_path / "musc.normalcy")
    meta, arrays = read_file(path)
    assert meta["params"]["intensity"] == "auto"
    del meta["params"]["intensity"]
    assert _rebuild(path, meta, arrays, check_backbone=False).intensity is None
