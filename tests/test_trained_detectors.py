"""Trained detectors (SimpleNet, FastFlow, EfficientAD, VAE) on tiny data: fit, score, save/load, bad input."""

from __future__ import annotations

import numpy as np
import pytest

import normalcy
from normalcy.errors import ParameterError, TrainingError
from normalcy.metrics import auroc

TRAINED = ["simplenet", "fastflow", "efficientad", "vae"]
# a 50% hold-out at alpha=0.2 is big enough, so each fit trains once (no cross-fitting): keeps the tests quick
TINY = {"image_size": 64, "progress": False, "batch_size": 8, "alpha": 0.2, "calibration_fraction": 0.5}


@pytest.fixture(scope="module")
def fitted(normal_images):
    return {name: normalcy.create_detector(name, **TINY).fit(normal_images) for name in TRAINED}


@pytest.mark.parametrize("name", TRAINED)
def test_fit_score_and_training_record(name, fitted, test_images):
    images, labels = test_images
    det = fitted[name]
    assert det.calibration_.method == "holdout"
    result = det.score(images)
    assert np.isfinite(result.scores).all()
    assert auroc(labels, result.scores) > 0.9
    assert [m.shape for m in result.maps] == [im.shape[:2] for im in images]
    record = det.train_result_
    assert record["stopped"] in ("epochs", "early", "time") and record["steps"] > 0


@pytest.mark.parametrize("name", TRAINED)
def test_save_load_identical_scores(name, fitted, test_images, tmp_path):
    images, _ = test_images
    det = fitted[name]
    back = normalcy.load(det.save(tmp_path / f"{name}.normalcy"))
    a, b = det.score(images), back.score(images)
    np.testing.assert_array_equal(a.scores, b.scores)
    for x, y in zip(a.maps, b.maps):
        np.testing.assert_array_equal(x, y)
    assert back.get_params() == det.get_params()
    assert back.train_result_ == det.train_result_


@pytest.mark.parametrize("name", TRAINED)
def test_too_few_images(name, normal_images):
    det = normalcy.create_detector(name, **TINY)
    with pytest.raises(ParameterError, match=f"at least {det.min_fit_items}"):
        det.fit(normal_images[: det.min_fit_items - 1])


def test_time_budget_stops_training(normal_images):
    det = normalcy.create_detector("simplenet", **TINY, epochs=10_000, patience=None, max_seconds=0.5)
    det.fit(normal_images)
    assert det.train_result_["stopped"] == "time"


def test_nan_loss_is_a_clear_error(normal_images):
    det = normalcy.create_detector("vae", **TINY, lr=1e12, epochs=50, patience=None)
    with pytest.raises(TrainingError, match="last good state"):
        det.fit(normal_images)
    assert not det.__sklearn_is_fitted__()


def test_bad_parameters(normal_images):
    for name, bad in (("simplenet", {"noise_std": 0}), ("fastflow", {"flow_steps": 0}), ("vae", {"beta": -1}),
                      ("efficientad", {"hard_fraction": 0})):
        with pytest.raises(ParameterError):
            normalcy.create_detector(name, **TINY, **bad).fit(normal_images)


def test_efficientad_with_autoencoder_round_trip(normal_images, test_images, tmp_path):
    images, labels = test_images
    det = normalcy.create_detector("efficientad", **TINY, autoencoder=True).fit(normal_images)
    assert det.quantiles_.shape == (2, 2)  # local and global map each get their own normalization
    result = det.score(images)
    assert np.isfinite(result.scores).all() and auroc(labels, result.scores) > 0.5
    back = normalcy.load(det.save(tmp_path / "ead.normalcy"))
    np.testing.assert_array_equal(back.score(images).scores, result.scores)


@pytest.mark.parametrize("name", TRAINED)
def test_pad_and_border_are_checked(name, normal_images):
    for bad in ({"pad": 1.0}, {"border": 0.5}):
        with pytest.raises(ParameterError):
            normalcy.create_detector(name, **TINY, **bad).fit(normal_images)


@pytest.mark.parametrize("name", TRAINED)
def test_old_model_state_is_scored_without_padding(name, fitted):
    det = fitted[name]
    meta = det._state_meta()
    assert meta["padded"] is True
    old = normalcy.create_detector(name, **TINY)
    old._load_state(det._state_arrays(), {"train": meta["train"]})  # what a file from before `pad` existed holds
    assert (old.pad, old.border) == (0.0, 0.0)
    new = normalcy.create_detector(name, **TINY)
    new._load_state(det._state_arrays(), meta)
    assert (new.pad, new.border) == (det.pad, det.border)
