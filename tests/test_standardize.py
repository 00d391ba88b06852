"""Per-channel standardization: fitted on normal patches only, exact, persisted with the model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from normalcy.errors import ParameterError
from normalcy.features.standardize import ChannelStats


def test_stats_match_numpy_and_survive_large_offsets():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(150_000, 4, generator=gen) * torch.tensor([1.0, 10.0, 1e-3, 5.0]) + torch.tensor([0, 1e4, 3, -7])
    stats = ChannelStats.fit(x)  # several chunks: the chunked float64 sums must equal the direct ones
    ref = x.double().numpy()
    assert np.allclose(stats.mean.numpy(), ref.mean(0), rtol=1e-6, atol=1e-6)
    assert np.allclose(stats.scale.numpy(), ref.std(0, ddof=1), rtol=1e-4)
    z = stats.apply(x)
    assert torch.allclose(z.mean(0), torch.zeros(4), atol=1e-3) and torch.allclose(z.std(0), torch.ones(4), atol=1e-3)


def test_apply_on_maps_equals_apply_on_rows():
    x = torch.randn(3, 5, 4, 4)
    stats = ChannelStats.fit(torch.randn(50, 5) * 3 + 1)
    rows = stats.apply(x.permute(0, 2, 3, 1).reshape(-1, 5))
    assert torch.allclose(stats.apply(x, dim=1).permute(0, 2, 3, 1).reshape(-1, 5), rows)


def test_dead_channel_does_not_explode_and_arrays_roundtrip():
    x = torch.randn(100, 3)
    x[:, 1] = 2.0  # constant channel: zero spread
    stats = ChannelStats.fit(x)
    assert torch.isfinite(stats.apply(torch.randn(10, 3))).all()
    back = ChannelStats.from_arrays(stats.arrays())
    assert torch.equal(back.mean, stats.mean) and torch.equal(back.scale, stats.scale)
    assert ChannelStats.from_arrays({}) is None
    with pytest.raises(ParameterError, match="N ≥ 2"):
        ChannelStats.fit(torch.randn(1, 3))


def test_patchcore_fits_stats_on_normals_only(normal_images, test_images, tmp_path):
    from normalcy.detectors import create_detector
    from normalcy.detectors.image.patchcore import split_holdout
    from normalcy.store import load

    det = create_detector("patchcore", image_size=64, standardize=True, positional=False, progress=False, seed=0)
    det.fit(normal_images)
    det._fit(normal_images)  # the hook alone: its statistics are exactly those of the normal patches
    expected = ChannelStats.fit(det.collect_patches(normal_images))
    assert torch.allclose(det._stats.mean, expected.mean) and torch.allclose(det._stats.scale, expected.scale)
    images, labels = test_images
    first = det.score(images)
    assert torch.equal(det._stats.mean, expected.mean)  # scoring test images never touches the statistics
    assert first.scores[labels == 1].min() > first.scores[labels == 0].max()
    again = load(det.save(tmp_path / "m.normalcy"))
    assert np.allclose(again.score(images).scores, first.scores, rtol=1e-5)
    fused = create_detector("patchcore", image_size=64, standardize=True, positional=True, progress=False, seed=0)
    fused.fit(normal_images)
    fused._fit(normal_images)  # with the fusion, the held-out images do not enter the statistics either
    fit_part, _ = split_holdout(normal_images, fused.holdout, fused.seed)
    assert torch.allclose(fused._stats.mean, ChannelStats.fit(fused.collect_patches(fit_part)).mean)
