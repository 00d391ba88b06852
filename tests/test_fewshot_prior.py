"""Few-shot with the zero-shot head as a prior: the fused map, the model file, old files, mismatched heads."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import normalcy
from normalcy.detectors import create_detector
from normalcy.detectors.image.fewshot import PRIOR_TABLE, FewShot, robust_z
from normalcy.detectors.image.zeroshot import PatchHead, ZeroShot, input_dim, save_head
from normalcy.errors import ParameterError

SMALL = {"image_size": 64, "progress": False, "transfer_table": None}


@pytest.fixture()
def small_head(tmp_path) -> str:
    """A seeded random head file for 64-pixel Lite0 features (aggregate 3, as the shipped head)."""
    det = ZeroShot(image_size=64, progress=False)
    return str(save_head(PatchHead(input_dim(len(det.strides)), hidden=8, seed=0), tmp_path / "head.safetensors",
                         {"features": det.feature_config(), "trained_on": ["test"]}))


def fitted(refs: list, **params) -> FewShot:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one reference: no calibration
        return create_detector("fewshot", **SMALL, **params).fit(refs)


def test_robust_z_is_scale_free():
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(3, 6, 7, generator=g)
    valid = torch.ones(3, 6, 7, dtype=torch.bool)
    valid[1, 0] = False
    z = robust_z(maps, valid)
    assert torch.allclose(robust_z(4.0 * maps - 2.0, valid), z, atol=1e-5)
    assert z[0].flatten().median().abs() < 1e-5


def test_fused_map_is_the_sum_of_both_robust_z_maps(small_head, normal_images, test_images):
    images, _ = test_images
    plain = fitted(normal_images[:1], intensity=None)  # the prior path scores raw images (intensity="auto")
    fused = fitted(normal_images[:1], prior=small_head)
    zs = create_detector("zeroshot", head=small_head, image_size=64, progress=False).fit()
    (f_p, _, valid), = plain.iter_features(images[:3])
    (f_f, _, _), = fused.iter_features(images[:3])
    (f_z, _, _), = zs.iter_features(images[:3])
    assert f_f.shape[1] == f_p.shape[1] + 1  # the few-shot features and one logit channel
    assert torch.allclose(f_f[:, :-1], f_p, atol=1e-4)
    logit = zs._score_features(f_z, valid)[1]
    assert torch.allclose(f_f[:, -1], logit, atol=1e-3)
    dist = plain._score_features(f_p, valid)[1]
    expected = robust_z(dist.clamp(min=1e-6).log(), valid) + robust_z(logit, valid)
    assert torch.allclose(fused._score_features(f_f, valid)[1], expected, atol=1e-2)
    assert torch.equal(fused.bank_, plain.bank_)  # the logit channel never enters the bank


def test_prior_model_file_round_trip_and_old_files(small_head, normal_images, test_images, tmp_path):
    images, labels = test_images
    det = fitted(normal_images[:2], prior=small_head)
    result = det.score(images)
    assert np.isfinite(result.scores).all()
    back = normalcy.load(det.save(tmp_path / "fused.safetensors"))
    assert back._uses_prior()  # the head travels in the file
    np.testing.assert_allclose(back.score(images).scores, result.scores, rtol=1e-4, atol=1e-4)
    plain = fitted(normal_images[:2])
    state = plain._state_meta()
    assert state == {"prior_meta": None}
    del state["prior_meta"]  # a file written before `prior` existed: loads and scores as it did
    old = FewShot(**SMALL, prior="builtin")
    old._load_state(plain._state_arrays(), state)
    assert old.prior is None and not old._uses_prior()


def test_prior_must_fit_the_features(small_head, normal_images):
    with pytest.raises(ParameterError, match="prior head"):
        fitted(normal_images[:1], prior=small_head, strides=(4, 8))


def test_bench_rows_say_when_the_prior_saw_the_set(tmp_path, small_head):
    from conftest import write_mvtec

    from normalcy.apps.bench.fewshot import run_fewshot_bench

    root = write_mvtec(tmp_path / "test", n_train=3, n_good=3, n_bad=3)  # "test" is in the head's trained_on
    said: list[str] = []
    rows = run_fewshot_bench(root, ["fewshot"], {**SMALL, "prior": small_head}, None, timing_images=1,
                             shots=[1], seeds=[0], echo=said.append)
    assert rows[0]["shots"] == 1 and np.isfinite(rows[0]["image_auroc"])
    assert "in-domain" in rows[0]["note"] and any("in-domain" in s for s in said)


@pytest.mark.skipif(not PRIOR_TABLE.is_file(), reason="the packaged transfer table for fused maps is not built")
def test_prior_decides_with_its_own_transfer_table():
    import json

    fused, plain = FewShot(prior="builtin"), FewShot()
    fused.n_fit_ = plain.n_fit_ = 1  # one reference: decisions come from a transfer table
    doc = json.loads(PRIOR_TABLE.read_text())
    assert np.allclose(fused.transfer().normals[1], np.sort(doc["tables"][0]["normals"]["1"]))
    assert not np.array_equal(fused.transfer().normals[1], plain.transfer().normals[1])
