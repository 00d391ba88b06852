"""The `clip` zero-shot detector on a tiny random CLIP built by the test (no real CLIP weights exist here, so these
tests check the mechanics — shapes, prompts, calibration, persistence, errors — not detection accuracy)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from normalcy.detectors import create_detector, detector_class
from normalcy.detectors.image.clip_zeroshot import ABNORMAL_STATES, NORMAL_STATES, TEMPLATES, ClipZeroShot
from normalcy.errors import ModelFileError, ParameterError, WeightsMismatchError, WeightsNotFoundError
from normalcy.store import load
from tests.test_clip_helpers import HEADS, TINY, save_tiny, tiny_state_dict


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("clipdet"))


def make(tiny, **kw) -> ClipZeroShot:
    sd, pt, st, vocab = tiny
    params = {"weights": str(st), "vocab": str(vocab), "image_size": 32, "vision_heads": HEADS, "text_heads": HEADS,
              "dense_layers": 1, "sigma": 1.0, "progress": False, **kw}
    return create_detector("clip", **params)


def test_registered_and_params_roundtrip():
    cls = detector_class("clip")
    assert cls is ClipZeroShot
    det = cls()
    assert type(det)(**det.get_params()).get_params() == det.get_params()
    with pytest.raises(ParameterError):
        det.set_params(no_such_parameter=1)


def test_end_to_end_without_images(tiny, normal_images, test_images):
    det = make(tiny).fit()  # no image needed
    assert det.text_prototypes_.shape == (2, TINY["embed"])
    assert det.prompt_counts_ == (len(NORMAL_STATES) * len(TEMPLATES), len(ABNORMAL_STATES) * len(TEMPLATES))
    images = [*test_images[0][:3], np.zeros((40, 56, 3), np.uint8), np.full((70, 30), 200, np.uint8)]
    result = det.score(images)
    assert result.scores.shape == (5,) and np.isfinite(result.scores).all()
    assert ((result.scores >= 0) & (result.scores <= 1)).all()  # a mix of two abnormal probabilities
    assert [m.shape for m in result.maps] == [im.shape[:2] for im in images]
    preds = det.predict(images[:2])
    assert [p.calibration for p in preds] == ["none", "none"] and all(np.isnan(p.p_value) for p in preds)
    np.testing.assert_allclose(make(tiny).fit().score(images).scores, result.scores, rtol=1e-6)  # deterministic


def test_normal_images_calibrate(tiny, normal_images, test_images):
    with pytest.warns(UserWarning, match="nothing can be flagged"):  # 12 normals cannot reach alpha 0.05
        det = make(tiny).fit(normal_images)
    assert det.calibration_.n == len(normal_images) and det.n_fit_ == len(normal_images)
    preds = det.predict(test_images[0][:4], alpha=0.2)
    assert all(0 < p.p_value <= 1 and p.calibration == "conformal" for p in preds)
    assert all(p.anomaly_map.shape == (64, 64) for p in preds)


def test_larger_canvas_and_pad_mode(tiny, test_images):
    det = make(tiny, image_size=48, resize_mode="pad").fit()  # 6×6 grid from a 4×4-grid model
    img = np.zeros((30, 60, 3), np.uint8)
    result = det.score([img, test_images[0][0]])
    assert [m.shape for m in result.maps] == [(30, 60), (64, 64)]


def test_map_follows_the_prototypes(tiny, test_images):
    """Scoring direction and map placement: prototypes taken from the image's own patches light up that region."""
    det = make(tiny, dense_layers=0, global_weight=0.0).fit()
    model = det.extractor
    img = test_images[0][6]  # defect in the centre
    x = torch.from_numpy(np.asarray(img)).permute(2, 0, 1)[None].float() / 255
    _, patches = model.encode_image(torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear",
                                                                    antialias=True))
    centre = torch.zeros(4, 4, dtype=torch.bool)
    centre[1:3, 1:3] = True
    grid = patches[0].permute(1, 2, 0)
    det.text_prototypes_ = torch.nn.functional.normalize(
        torch.stack([grid[~centre].mean(0), grid[centre].mean(0)]), dim=1).numpy()
    amap = det.score([img]).maps[0]
    assert amap[24:40, 24:40].mean() > amap[:8].mean() and amap[24:40, 24:40].mean() > np.median(amap)


def test_prompt_sources(tiny):
    det = make(tiny, object_name="tile", normal_prompts=["a photo of a good {}"],
               abnormal_prompts=lambda name: (f"a photo of a {s} {name}" for s in ("cracked", "broken"))).fit()
    assert det.prompt_texts() == (["a photo of a good tile"], ["a photo of a cracked tile", "a photo of a broken tile"])
    assert det.prompt_counts_ == (1, 2)
    default = make(tiny, object_name="tile").fit()
    assert "a photo of a flawless tile." in default.prompt_texts()[0]
    assert not np.allclose(det.text_prototypes_, default.text_prototypes_)
    with pytest.raises(ParameterError, match="normal_prompts"):
        make(tiny, normal_prompts="just one string").fit()
    with pytest.raises(ParameterError, match="abnormal_prompts"):
        make(tiny, abnormal_prompts=[]).fit()


def test_errors_name_the_fix(tiny, tmp_path, normal_images):
    with pytest.raises(WeightsNotFoundError, match="local CLIP weights"):
        ClipZeroShot().fit()
    with pytest.raises(WeightsNotFoundError, match="vocab="):
        make(tiny, vocab=None).fit()
    with pytest.raises(WeightsNotFoundError, match="not found"):
        make(tiny, weights=str(tmp_path / "absent.safetensors")).fit()
    with pytest.raises(WeightsNotFoundError, match="not found"):
        make(tiny, vocab=str(tmp_path / "absent.txt.gz")).fit()
    bogus = tmp_path / "bogus.pt"
    torch.save({"encoder.weight": torch.zeros(3, 3)}, bogus)
    with pytest.raises(WeightsMismatchError, match="not an OpenAI-layout CLIP"):
        make(tiny, weights=str(bogus)).fit()
    with pytest.raises(ParameterError, match="multiple of the model's patch size 8"):
        make(tiny, image_size=36).fit()
    with pytest.raises(ParameterError, match="resize_mode"):
        make(tiny, resize_mode="aspect").fit()
    with pytest.raises(ParameterError, match="groups"):
        make(tiny).fit(normal_images[:2], groups="auto")


def test_save_load_references_weights_by_hash(tiny, tmp_path, test_images):
    images = test_images[0][:4]
    det = make(tiny, abnormal_prompts=lambda name: [f"a damaged {name}"]).fit()
    path = det.save(tmp_path / "clip.normalcy")
    assert path.stat().st_size < 20_000  # the prototypes, not the weights (the state dict alone is larger)
    again = load(path)
    assert type(again) is ClipZeroShot and again.abnormal_prompts == ["a damaged object"]
    np.testing.assert_allclose(again.score(images).scores, det.score(images).scores, rtol=1e-6)
    assert again.model_meta_["backbone"]["weights_sha256"] == det.extractor.weights_sha256

    # the same path now holds other weights: loading refuses instead of scoring with the wrong model
    from safetensors.torch import save_file

    moved = tmp_path / "weights.safetensors"
    save_file(tiny_state_dict(seed=0), str(moved))
    det2 = make(tiny, weights=str(moved)).fit()
    path2 = det2.save(tmp_path / "clip2.normalcy")
    save_file(tiny_state_dict(seed=5), str(moved))
    with pytest.raises(ModelFileError, match="weights sha256"):
        load(path2)
