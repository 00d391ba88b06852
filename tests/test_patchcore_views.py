"""PatchCore's test-time views: each view's fused map is flipped back onto the image, the maps are averaged."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from normalcy.detectors import create_detector
from normalcy.detectors.image.common import masked_max
from normalcy.detectors.image.views import ViewItems, check_views, flip_image, unflip
from normalcy.errors import ParameterError
from normalcy.store import load

SMALL = {"image_size": 64, "progress": False, "seed": 0, "calibration_fraction": 0.0}


def test_check_views_accepts_known_distinct_names_only():
    assert check_views("identity") == ("identity",)
    assert check_views(["identity", "hflip"]) == ("identity", "hflip")
    for bad in ((), ("identity", "identity"), ("rot90",)):
        with pytest.raises(ParameterError, match="test_views"):
            check_views(bad)


def test_unflip_undoes_the_image_flip_on_maps():
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    for view in ("identity", "hflip", "vflip"):
        shown = flip_image(image, view)
        back = unflip(torch.from_numpy(shown[..., 0].copy()), view).numpy()
        assert np.array_equal(back, image[..., 0])
    assert np.array_equal(ViewItems([image], "hflip")[0], image[:, ::-1])


def test_flip_views_make_the_nn_score_mirror_invariant(normal_images, test_images):
    images, labels = test_images
    det = create_detector("patchcore", positional=False, test_views=("identity", "hflip"), **SMALL).fit(normal_images)
    out = det.score(images)
    mirrored = det.score([np.ascontiguousarray(im[:, ::-1]) for im in images])
    # the views of a mirrored image are the original's views swapped: same mean map, mirrored
    assert np.allclose(mirrored.scores, out.scores, rtol=1e-4, atol=1e-4)
    assert all(np.allclose(a, b[:, ::-1], atol=1e-3) for a, b in zip(out.maps, mirrored.maps))
    assert out.scores[labels == 1].min() > out.scores[labels == 0].max()


def test_views_average_the_nn_term_before_the_fusion(normal_images, test_images):
    images, labels = test_images
    det = create_detector("patchcore", test_views=("identity", "hflip"), **SMALL).fit(normal_images)
    out = det.score(images)
    assert out.scores[labels == 1].min() > out.scores[labels == 0].max()
    feats = next(iter(det.iter_features(images[:4])))[0]
    flipped = next(iter(det.iter_features([np.ascontiguousarray(im[:, ::-1]) for im in images[:4]])))[0]
    nn, _, searched = det._nn_maps(feats)
    mean = (nn + det._nn_maps(flipped)[0].flip(-1)) / 2  # the position term is the image's own, not the flip's
    valid = torch.ones_like(nn, dtype=torch.bool)
    expected = det._fuse(mean, searched, valid)
    assert np.allclose(out.scores[:4], masked_max(expected, det.score_cells(valid)).numpy(), rtol=1e-4, atol=1e-4)
    one = create_detector("patchcore", **SMALL).fit(normal_images).score(images)
    assert not np.allclose(one.scores, out.scores)  # the second view changes the scores
    with pytest.raises(ParameterError, match="identity"):
        create_detector("patchcore", test_views=("hflip",), **SMALL).fit(normal_images).score(images)


def test_views_roundtrip_and_reject_reweight(normal_images, test_images, tmp_path):
    images, _ = test_images
    det = create_detector("patchcore", test_views=("identity", "hflip", "vflip"), **SMALL).fit(normal_images)
    again = load(det.save(tmp_path / "m.normalcy"))
    assert tuple(again.test_views) == ("identity", "hflip", "vflip")
    assert np.allclose(again.score(images).scores, det.score(images).scores, rtol=1e-5)
    with pytest.raises(ParameterError, match="reweight"):
        create_detector("patchcore", positional=False, reweight=True, test_views=("identity", "hflip"),
                        **SMALL).fit(normal_images).score(images)


def test_export_refuses_views_the_graph_does_not_have(normal_images):
    from normalcy.apps.export.graph import check_exportable

    det = create_detector("patchcore", test_views=("identity", "hflip"), **SMALL).fit(normal_images)
    with pytest.raises(ParameterError, match="test_views"):
        check_exportable(det)
    det.test_views = ("identity",)  # views act at predict time only: the same fit exports with one view
    check_exportable(det)
