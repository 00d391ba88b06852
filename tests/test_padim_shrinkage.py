"""The per-position Gaussian's options: Ledoit–Wolf shrinkage from streamed moments and 3×3 neighbourhood samples."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.covariance import ledoit_wolf

from normalcy.detectors import create_detector
from normalcy.detectors.image.padim import fit_position_gaussian
from normalcy.errors import ParameterError

SMALL = {"image_size": 64, "progress": False, "seed": 0, "calibration_fraction": 0.0, "coreset_ratio": 1.0}


def features(n: int, c: int = 6, h: int = 4, w: int = 5, seed: int = 0) -> torch.Tensor:
    """n×c×h×w correlated features, not centred (the streamed moments must centre them)."""
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(c, c, generator=gen)
    x = torch.einsum("cd,bdhw->bchw", mix, torch.randn(n, c, h, w, generator=gen))
    return x + 3.0


def covariances(precision: torch.Tensor) -> np.ndarray:
    return torch.linalg.inv(precision.double()).numpy()


def test_without_options_it_is_the_sample_covariance_plus_the_ridge():
    x = features(30)
    chans = torch.tensor([0, 2, 3, 5])
    mean, precision = fit_position_gaussian([x[:7], x[7:]], chans, 0.01)
    f = x[:, chans].flatten(2).permute(2, 0, 1).double()  # P×B×c
    for p in (0, 7, 19):
        want = np.cov(f[p].numpy().T) + 0.01 * np.eye(4)
        assert np.allclose(covariances(precision)[p], want, atol=1e-4)
        assert torch.allclose(mean[p].double(), f[p].mean(0), atol=1e-5)


def test_identity_shrinkage_matches_sklearn_ledoit_wolf_from_streamed_batches():
    x = features(25)
    chans = torch.arange(6)
    _, precision = fit_position_gaussian([x[:4], x[4:13], x[13:]], chans, 0.0, "identity")
    f = x.flatten(2).permute(2, 0, 1).double().numpy()  # P×B×c
    for p in (0, 11):
        _, lam = ledoit_wolf(f[p])
        assert 0.0 <= lam <= 1.0
        s = np.cov(f[p].T)  # the intensity is applied to the unbiased covariance (λ = 0: the plain estimate)
        want = (1 - lam) * s + lam * np.trace(s) / 6 * np.eye(6)
        assert np.allclose(covariances(precision)[p], want, atol=1e-4)


def test_shrinkage_vanishes_when_images_far_outnumber_channels():
    x = features(4000, c=4, h=2, w=2) * torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # positions differ from the pool
    chans = torch.arange(4)
    _, plain = fit_position_gaussian([x], chans, 0.01)
    for target in ("identity", "pooled"):
        _, shrunk = fit_position_gaussian([x[:1000], x[1000:]], chans, 0.01, target)
        assert np.allclose(covariances(shrunk), covariances(plain), rtol=0.02, atol=0.02)


@pytest.mark.parametrize("target", ["identity", "pooled"])
def test_precision_is_positive_definite_with_fewer_images_than_channels(target):
    x = torch.randn(12, 40, 3, 3, generator=torch.Generator().manual_seed(1))
    _, precision = fit_position_gaussian([x], torch.arange(40), 0.0, target)
    assert float(torch.linalg.eigvalsh(precision.double()).min()) > 0.0


def test_neighbourhood_pools_the_samples_of_the_three_by_three_positions():
    x = features(10)
    chans = torch.arange(6)
    mean, precision = fit_position_gaussian([x[:3], x[3:]], chans, 0.01, None, 3)
    for (i, j), (rows, cols) in {(1, 1): ((0, 3), (0, 3)), (0, 0): ((0, 2), (0, 2)), (3, 4): ((2, 4), (3, 5))}.items():
        g = x[:, :, rows[0] : rows[1], cols[0] : cols[1]].permute(0, 2, 3, 1).reshape(-1, 6).double()
        p = i * 5 + j
        assert torch.allclose(mean[p].double(), g.mean(0), atol=1e-5)
        assert np.allclose(covariances(precision)[p], np.cov(g.numpy().T) + 0.01 * np.eye(6), atol=1e-4)


def test_bad_settings_are_parameter_errors():
    x = features(5)
    with pytest.raises(ParameterError):
        fit_position_gaussian([x], torch.arange(6), 0.01, "oracle")
    with pytest.raises(ParameterError):
        fit_position_gaussian([x], torch.arange(6), 0.01, None, 2)
    with pytest.raises(ParameterError):
        fit_position_gaussian([x[:1]], torch.arange(6), 0.01)


@pytest.mark.parametrize("params", [{"position_shrinkage": "identity"}, {"position_neighbourhood": 3}])
def test_patchcore_with_position_options_separates_and_round_trips(normal_images, test_images, tmp_path, params):
    from normalcy.store import load

    images, labels = test_images
    det = create_detector("patchcore", **params, **SMALL).fit(normal_images)
    out = det.score(images)
    assert out.scores[labels == 1].min() > out.scores[labels == 0].max()
    again = load(det.save(tmp_path / "m.normalcy"))
    assert again.get_params()["position_shrinkage"] == det.get_params()["position_shrinkage"]
    assert np.allclose(again.score(images).scores, out.scores, rtol=1e-5)


def test_shrinkage_is_patchcores_default_and_old_files_keep_the_plain_estimate(normal_images, test_images, tmp_path):
    from normalcy.store import _rebuild, read_file

    assert create_detector("patchcore").get_params()["position_shrinkage"] == "identity"
    det = create_detector("patchcore", position_shrinkage=None, **SMALL).fit(normal_images)
    meta, arrays = read_file(det.save(tmp_path / "old.normalcy"))
    del meta["params"]["position_shrinkage"]  # as written before the parameter existed
    old = _rebuild(tmp_path / "old.normalcy", meta, arrays, check_backbone=True)
    assert old.get_params()["position_shrinkage"] is None
    images, _ = test_images
    assert np.allclose(old.score(images).scores, det.score(images).scores, rtol=1e-5)
