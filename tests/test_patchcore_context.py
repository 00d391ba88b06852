"""PatchCore's `context=True`: a z-scored stride-32 NN term added to the map (not to the image score)."""

from __future__ import annotations

import numpy as np
import pytest

from normalcy.detectors import create_detector
from normalcy.errors import ParameterError
from normalcy.store import load

SMALL = {"image_size": 64, "progress": False, "seed": 0, "calibration_fraction": 0.0}


@pytest.fixture(scope="module")
def fitted(normal_images):
    """The default model and the same with the context term, on the same images."""
    plain = create_detector("patchcore", **SMALL).fit(normal_images)
    ctx = create_detector("patchcore", context=True, **SMALL).fit(normal_images)
    return plain, ctx


def test_context_leaves_the_bank_gaussian_and_image_score_alone(fitted, test_images):
    plain, ctx = fitted
    images, labels = test_images
    assert ctx.memory_bank_.shape == plain.memory_bank_.shape  # the stride-32 channels stay out of the bank
    assert np.allclose(ctx.memory_bank_.numpy(), plain.memory_bank_.numpy())
    assert np.allclose(ctx._position[1].numpy(), plain._position[1].numpy())
    a, b = plain.score(images), ctx.score(images)
    assert np.allclose(a.scores, b.scores, rtol=1e-5, atol=1e-5)  # the context enters the map only
    assert all(m.shape == n.shape and np.isfinite(n).all() for m, n in zip(a.maps, b.maps))
    assert not all(np.allclose(m, n) for m, n in zip(a.maps, b.maps))
    # the defect square stands out in the map with the context term too
    inside = [float(m[26:38, 26:38].mean() - m.mean()) for m in b.maps[6:]]
    assert min(inside) > 0


def test_context_term_is_z_scored_on_held_out_normals(fitted):
    _, ctx = fitted
    bank, _, norms = ctx._context
    assert bank.shape[1] == ctx.extractor.net.stage_channels[32]
    assert float(norms[1]) > 0


def test_context_model_roundtrips(fitted, test_images, tmp_path):
    _, ctx = fitted
    images, _ = test_images
    again = load(ctx.save(tmp_path / "m.normalcy"))
    a, b = ctx.score(images), again.score(images)
    assert np.allclose(a.scores, b.scores, rtol=1e-5)
    assert all(np.allclose(m, n, rtol=1e-4, atol=1e-5) for m, n in zip(a.maps, b.maps))


@pytest.mark.parametrize("bad", [{"positional": False}, {"modes": "auto"}, {"project_dim": 32},
                                 {"strides": (8, 16, 32)}])
def test_context_rejects_what_it_cannot_fuse(normal_images, bad):
    with pytest.raises(ParameterError, match="context"):
        create_detector("patchcore", context=True, **{**SMALL, **bad}).fit(normal_images)


def test_context_model_refuses_onnx_export(fitted):
    from normalcy.apps.export.graph import check_exportable

    with pytest.raises(ParameterError, match="context"):
        check_exportable(fitted[1])
