"""The shared trainer: seeded determinism, stopping rules, and the state it keeps on NaN or Ctrl-C."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from normalcy.detectors.training import seeded, split_items, train
from normalcy.errors import ParameterError, TrainingError


def regression_data(seed: int = 0, n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=gen)
    return x, x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1 * torch.randn(n, generator=gen)


def make_model(seed: int = 0) -> nn.Module:
    with seeded(seed):
        return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


def mse(model: nn.Module):
    return lambda x, y: (model(x)[:, 0] - y).pow(2).mean()


def val_loss(model: nn.Module, data) -> float:
    with torch.no_grad():
        return mse(model)(*data).item()


def test_deterministic_with_seed_and_learns():
    data = regression_data()
    states = []
    for seed in (0, 0, 1):
        model = make_model()
        before = val_loss(model, data)
        result = train(model, mse(model), data, epochs=5, batch_size=16, lr=1e-2, seed=seed)
        assert result.stopped == "epochs" and result.epochs == 5 and result.steps == 20
        assert val_loss(model, data) < before
        states.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(states[0], states[1], rtol=0, atol=0)
    assert not torch.equal(states[0], states[2])  # the seed drives the batch order


def test_training_does_not_touch_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    model = make_model()
    train(model, mse(model), regression_data(), epochs=1, seed=5)
    torch.testing.assert_close(torch.rand(3), expected)


def test_early_stopping_stops_and_restores_best():
    model = nn.Linear(1, 1, bias=False)
    nn.init.zeros_(model.weight)
    x = torch.ones(8, 1)
    # training pulls the weight to +1, the held-out data wants -1: validation only gets worse
    result = train(model, mse(model), (x, torch.ones(8)), (x, -torch.ones(8)), epochs=50, batch_size=8,
                   lr=0.05, patience=3, schedule="constant")
    assert result.stopped == "early"
    assert result.best_epoch == 1 and result.epochs == 4
    assert val_loss(model, (x, -torch.ones(8))) == pytest.approx(result.best_loss)


def test_max_seconds_respected():
    model = make_model()
    loss = mse(model)

    def slow_loss(x, y):
        time.sleep(0.02)
        return loss(x, y)

    t0 = time.perf_counter()
    result = train(model, slow_loss, regression_data(), epochs=10_000, batch_size=64, max_seconds=0.3)
    assert result.stopped == "time"
    assert result.epochs < 10_000
    assert time.perf_counter() - t0 < 3.0


def test_nan_loss_raises_and_keeps_last_good_state():
    model = make_model()
    data, val = regression_data(0), regression_data(1)
    calls = {"n": 0}

    def flaky(x, y):
        calls["n"] += model.training  # count training steps only
        loss = mse(model)(x, y)
        return loss * float("nan") if calls["n"] > 12 and model.training else loss

    with pytest.raises(TrainingError, match="last good state") as info:
        train(model, flaky, data, val, epochs=20, batch_size=16, lr=1e-2)
    kept = info.value.result
    assert kept.epochs == 3 and kept.best_epoch >= 1
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert val_loss(model, val) == pytest.approx(kept.best_loss)


def test_keyboard_interrupt_keeps_best_state():
    model = make_model()
    data, val = regression_data(0), regression_data(1)
    calls = {"n": 0}

    def interrupted(x, y):
        calls["n"] += model.training
        if calls["n"] > 10 and model.training:
            raise KeyboardInterrupt
        return mse(model)(x, y)

    with pytest.warns(RuntimeWarning, match="interrupted"):
        result = train(model, interrupted, data, val, epochs=20, batch_size=16, lr=1e-2)
    assert result.stopped == "interrupted" and result.best_epoch == 2
    assert val_loss(model, val) == pytest.approx(result.best_loss)


def test_bad_arguments():
    model = make_model()
    with pytest.raises(ParameterError):
        train(model, mse(model), regression_data(), epochs=0)
    with pytest.raises(ParameterError):
        train(model, mse(model), regression_data(), schedule="step")
    with pytest.raises(ParameterError):
        train(model, mse(model), (torch.zeros(3, 4), torch.zeros(2)))
    with pytest.raises(ParameterError):
        split_items(10, 1.0, 0)


def test_split_items_is_seeded_and_keeps_enough_training_items():
    tr, va = split_items(20, 0.2, seed=0)
    assert len(va) == 4 and sorted([*tr, *va]) == list(range(20))
    assert (split_items(20, 0.2, seed=0)[1] == va).all()
    assert len(split_items(2, 0.5, seed=0)[1]) == 0  # too few items: no validation split


def test_padded_extractor_crops_back_to_the_image_cells():
    from normalcy.features.extractor import PaddedExtractor, pad_cells

    calls = []

    def base(x: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(x.shape))
        return x[:, :1, ::8, ::8] + 0.0  # a stride-8 "feature map" that still shows the pixels

    x = torch.rand(2, 3, 64, 64)
    assert pad_cells(0.125, 64, 8) == 1
    padded = PaddedExtractor(base, cells=1, stride=8)
    out = padded(x)
    assert calls[-1] == (2, 3, 80, 80) and out.shape == (2, 1, 8, 8)
    torch.testing.assert_close(out, x[:, :1, ::8, ::8])  # the crop lands exactly on the original cells
    torch.testing.assert_close(PaddedExtractor(base, cells=0, stride=8)(x), base(x))
    with pytest.raises(ParameterError, match="pad"):
        pad_cells(1.5, 64, 8)


def test_border_band_never_decides_the_image_score():
    from normalcy.detectors.image.common import border_cells
    from normalcy.detectors.image.simplenet import SimpleNet
    from normalcy.detectors.image.trained import smoothed_max

    maps = torch.zeros(1, 16, 16)
    maps[0, 0, 5] = 10.0  # hot cell on the image border
    maps[0, 8, 8] = 1.0
    valid = torch.ones(1, 16, 16, dtype=torch.bool)
    det = SimpleNet(border=0.0625)
    assert border_cells(det.border, 16) == 1
    inner = det.score_cells(valid)
    assert not inner[0, 0].any() and inner[0, 1:-1, 1:-1].all()
    assert smoothed_max(maps, inner, sigma=0.0) == 1.0
    assert smoothed_max(maps, valid, sigma=0.0) == 10.0
    with pytest.raises(ParameterError, match="border"):
        border_cells(0.5, 16)
