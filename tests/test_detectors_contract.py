"""One contract test over every registered image detector (the sklearn check_estimator idea)."""

from __future__ import annotations

import numpy as np
import pytest

from normalcy.detectors import DETECTORS, create_detector, detector_class
from normalcy.detectors.estimator import clone
from normalcy.errors import NotFittedError, ParameterError
from normalcy.metrics import auroc

SMALL = {"image_size": 64, "progress": False, "batch_size": 8}
# the shipped zero-shot head learned from ~256-px canvases of real parts; a 64-px canvas (an 8×8 stride-8 grid) is
# outside what it saw (gain-normalized head: AUROC 0.89 there, 1.0 at 128), so its contract runs at 128 px
CANVAS = {"zeroshot": 128}


def small(name: str, **extra):
    params = dict(SMALL)
    accepted = detector_class(name)().get_params()
    return create_detector(name, **{k: v for k, v in {**params, **extra}.items() if k in accepted})


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_contract(name, normal_images, test_images):
    images, labels = test_images
    det = small(name, image_size=CANVAS.get(name, SMALL["image_size"]))
    with pytest.raises(NotFittedError):
        det.score(images)
    assert det.fit(normal_images) is det
    assert all(k.endswith("_") for k in det._fitted_attributes())
    result = det.score(images)
    if getattr(det, "zero_shot", False):  # scores its input batch mutually: give it a mostly normal batch
        both = det.score(normal_images + images)
        result = type(result)(both.scores[len(normal_images):], both.maps and both.maps[len(normal_images):])
    assert result.scores.shape == (len(images),)
    assert np.isfinite(result.scores).all()
    assert auroc(labels, result.scores) > 0.9, "higher score must mean more anomalous on an obvious defect"
    if result.maps is not None:
        assert [m.shape for m in result.maps] == [im.shape[:2] for im in images]
        # the defect region is hotter than the rest in every defective image
        for img_map in result.maps[6:]:
            c = img_map.shape[0] // 2
            assert img_map[c - 4 : c + 4, c - 4 : c + 4].mean() > np.median(img_map)
    again = clone(det).fit(normal_images).score(images)
    if getattr(det, "zero_shot", False):
        again.scores = clone(det).fit().score(normal_images + images).scores[len(normal_images):]
    np.testing.assert_allclose(again.scores, result.scores, rtol=1e-5, atol=1e-6)  # deterministic with a seed
    preds = det.predict(images[:2], alpha=0.05)
    assert len(preds) == 2 and all(0 < p.p_value <= 1 for p in preds)


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_params_roundtrip(name):
    det = detector_class(name)()
    params = det.get_params()
    assert type(det)(**params).get_params() == params
    with pytest.raises(ParameterError):
        det.set_params(no_such_parameter=1)


def test_unknown_detector():
    with pytest.raises(ParameterError, match="known detectors"):
        create_detector("nope")


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_save_load_roundtrip(name, normal_images, test_images, tmp_path):
    """Every registered image detector saves to one safe file and scores the same after loading."""
    from normalcy.store import load

    images, _ = test_images
    det = small(name).fit(normal_images)
    batch = normal_images + images if getattr(det, "zero_shot", False) else images
    path = det.save(tmp_path / f"{name}.normalcy")
    again = load(path)
    assert type(again) is type(det) and again.get_params() == det.get_params()
    np.testing.assert_allclose(again.score(batch).scores, det.score(batch).scores, rtol=1e-5, atol=1e-6)
