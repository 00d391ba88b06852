"""PatchCore's per-mode scoring: one position Gaussian and normalizers per normal mode, the bank shared."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import texture

from normalcy.detectors import create_detector
from normalcy.detectors.image.modes import MIN_MODE_IMAGES, find_image_modes, image_descriptors
from normalcy.detectors.image.padim import position_distances
from normalcy.errors import ParameterError
from normalcy.store import load

SMALL = {"image_size": 64, "progress": False, "seed": 0, "calibration_fraction": 0.0}


def other_product(rng: np.random.Generator) -> np.ndarray:
    """A second population: dim vertical-stripe texture under bright horizontal bars."""
    bars = 120.0 * (np.sin(np.arange(64) / 2.0) > 0)[:, None, None]
    return np.clip(0.3 * texture(rng) + bars, 0, 255).astype(np.uint8)


def two_populations(n: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """n textures and n images of another product (a second, clearly separate population)."""
    rng = np.random.default_rng(seed)
    return [texture(rng) for _ in range(n)], [other_product(rng) for _ in range(n)]


@pytest.fixture(scope="module")
def pooled():
    a, b = two_populations(16, seed=5)
    det = create_detector("patchcore", modes="auto", **SMALL).fit(a + b)
    return det, a, b


def test_descriptors_average_valid_cells_only():
    feats = torch.zeros(1, 2, 2, 2)
    feats[0, :, 0, 0] = 4.0
    feats[0, :, 1, 1] = 100.0
    valid = torch.tensor([[[True, True], [True, False]]])
    assert np.allclose(image_descriptors(feats, valid), [[4.0 / 3, 4.0 / 3]])


def test_modes_are_found_only_when_the_set_has_them():
    rng = np.random.default_rng(0)
    one = rng.normal(size=(40, 5))
    labels, model = find_image_modes(one)
    assert model is None and not labels.any()
    two = np.concatenate([rng.normal(size=(20, 5)), rng.normal(size=(20, 5)) + 10.0])
    labels, model = find_image_modes(two)
    assert model is not None and len(set(labels[:20])) == 1 and len(set(labels[20:])) == 1 and labels[0] != labels[20]
    labels, model = find_image_modes(two[: 2 * MIN_MODE_IMAGES - 2])  # too few per mode: one pool
    assert model is None


def test_each_image_is_scored_against_its_own_mode(pooled):
    det, a, b = pooled
    assert det.n_modes_ == 2
    feats, _, valid = next(det.iter_features(a[:2] + b[:2]))
    searched = det._stats.apply(feats, dim=1)
    own = det._modes.assign(searched, valid)
    assert own[0] == own[1] != own[2] == own[3]
    # the map of a population-B image is built from B's Gaussian and B's normalizers, not A's
    nn = det._nn_maps(feats)[0]
    k, other = own[2], own[0]
    mu_nn, sd_nn, mu_pos, sd_pos = (float(v) for v in det._modes.norms[k])
    pos = position_distances(searched[2:3], det._position[0], det._modes.means[k], det._modes.precisions[k])
    expected = (nn[2:3] - mu_nn) / sd_nn + (pos - mu_pos) / sd_pos
    got = det._mode_maps(nn, searched, valid)
    assert torch.allclose(got[2:3], expected, atol=1e-4)
    wrong = position_distances(searched[2:3], det._position[0], det._modes.means[other], det._modes.precisions[other])
    assert float(wrong.mean()) > float(pos.mean())  # B's Gaussian fits a B image better than A's does


def test_one_population_keeps_the_pooled_scores(normal_images, test_images):
    images, _ = test_images
    rng = np.random.default_rng(9)
    fit = normal_images + [texture(rng) for _ in range(12)]
    plain = create_detector("patchcore", **SMALL).fit(fit)
    auto = create_detector("patchcore", modes="auto", **SMALL).fit(fit)
    assert auto.n_modes_ == 1
    assert np.allclose(auto.score(images).scores, plain.score(images).scores)


def test_modes_follow_groups_only_when_asked_and_bad_value_is_refused(pooled):
    _, a, b = pooled
    cal = {**SMALL, "calibration_fraction": 0.2}
    det = create_detector("patchcore", modes="groups", **cal).fit(a + b, groups="auto")
    assert det.n_modes_ == 2
    assert create_detector("patchcore", **cal).fit(a + b, groups="auto").n_modes_ == 1  # default: pooled scoring
    with pytest.raises(ParameterError, match="modes"):
        create_detector("patchcore", modes="yes", **SMALL).fit(a + b)


def test_modes_roundtrip_and_old_models_load_pooled(pooled, tmp_path):
    det, a, b = pooled
    probe = a[:3] + b[:3]
    again = load(det.save(tmp_path / "modes.normalcy"))
    assert again.n_modes_ == 2
    assert np.allclose(again.score(probe).scores, det.score(probe).scores, rtol=1e-5)
    # a model file without the mode arrays (saved before per-mode scoring) scores with the pooled term
    arrays = {k: v for k, v in det._state_arrays().items() if not k.startswith("mode_")}
    old = create_detector("patchcore", **SMALL)
    old._load_state(arrays, det._state_meta())
    assert old.n_modes_ == 1
    det_modes, det._modes = det._modes, None
    try:
        assert np.allclose(old._score(probe).scores, det._score(probe).scores, rtol=1e-5)
    finally:
        det._modes = det_modes


def test_export_refuses_a_per_mode_model(pooled):
    from normalcy.apps.export.graph import check_exportable

    with pytest.raises(ParameterError, match="per-mode"):
        check_exportable(pooled[0])


def test_intensity_jitter_adds_shifted_copies_to_the_bank_only(normal_images):
    from normalcy.detectors.image.intensity import intensity_shift, jitter_copies
    from normalcy.detectors.image.patchcore import split_holdout

    img = normal_images[0]
    assert intensity_shift(img, "gain", 1.0).tolist() == img.tolist()
    assert intensity_shift(img, "gain", 0.5).mean() < img.mean() < intensity_shift(img, "gamma", 0.5).mean()
    assert len(jitter_copies(normal_images[:3])) == 6
    det = create_detector("patchcore", intensity_jitter=True, coreset_ratio=1.0, **SMALL).fit(normal_images)
    fit, held = split_holdout(normal_images, det.holdout, det.seed)
    assert det.memory_bank_.shape[0] == 3 * det.collect_patches(fit).shape[0]  # fit images and 2 copies each


def test_given_groups_become_the_modes(pooled):
    _, a, b = pooled
    labels = ["left"] * len(a) + ["right"] * len(b)
    det = create_detector("patchcore", modes="groups", **{**SMALL, "calibration_fraction": 0.2}).fit(a + b,
                                                                                                  groups=labels)
    assert det.n_modes_ == 2 and det._modes.groups.labels == ("left", "right")
    feats, _, valid = next(det.iter_features([a[0], b[0]]))
    assert det._modes.assign(det._stats.apply(feats, dim=1), valid).tolist() == [0, 1]
    few = ["left"] * (len(a) + len(b) - 3) + ["right"] * 3  # a group too small for its own Gaussian: one pool
    assert create_detector("patchcore", modes="groups", **SMALL).fit(a + b, groups=few).n_modes_ == 1


def test_gain_normalization_removes_a_global_gain(normal_images, test_images, tmp_path):
    from normalcy.detectors.image.intensity import GainNormalized, gain_normalize, intensity_shift

    img = normal_images[0]
    assert abs(gain_normalize(img).mean() / 255.0 - 0.5) < 0.01
    assert np.abs(gain_normalize(intensity_shift(img, "gain", 0.8)).astype(int) - gain_normalize(img)).max() <= 2
    view = GainNormalized(normal_images[:3])
    assert len(view) == 3 and np.array_equal(view[-1], gain_normalize(normal_images[2]))
    images, labels = test_images
    det = create_detector("patchcore", intensity="gain", **SMALL).fit(normal_images)
    plain = det.score(images).scores
    darker = det.score([intensity_shift(im, "gain", 0.8) for im in images]).scores
    # the same images 20% darker score alike (up to uint8 rounding twice; defects score ~10× normals here)
    assert np.abs(plain - darker).max() < 1.0
    assert plain[labels == 1].min() > plain[labels == 0].max() and darker[labels == 1].min() > plain[labels == 0].max()
    again = load(det.save(tmp_path / "gain.normalcy"))  # the setting travels with the model file
    assert again.intensity == "gain" and np.allclose(again.score(images).scores, plain, rtol=1e-5)
    with pytest.raises(ParameterError, match="intensity"):
        create_detector("patchcore", intensity="equalize", **SMALL).fit(normal_images)


def test_gain_is_the_default_and_files_from_before_it_load_without_it(normal_images, tmp_path):
    from normalcy.store import _rebuild, read_file

    det = create_detector("patchcore", **SMALL).fit(normal_images)
    assert det.intensity == "gain"
    path = det.save(tmp_path / "now.normalcy")
    meta, arrays = read_file(path)
    assert load(path).intensity == "gain"
    del meta["params"]["intensity"]  # a file written before the parameter existed was fitted on raw images
    assert _rebuild(path, meta, arrays, check_backbone=False).intensity is None
