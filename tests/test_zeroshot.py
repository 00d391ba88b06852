"""Transfer-learned zero-shot detector: head inputs, the head learning synthetic defects, head files, fit without
normal images, and the model-file round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import normalcy
from normalcy.detectors import create_detector
from normalcy.detectors.image.zeroshot import (
    BUILTIN_HEAD,
    PatchHead,
    ZeroShot,
    head_inputs,
    input_dim,
    load_head,
    save_head,
    standardize_per_image,
    train_head,
)
from normalcy.errors import ModelFileError, ParameterError

SMALL = {"image_size": 64, "progress": False}


def synthetic_grids(n: int, seed: int, c: int = 8, size: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """n feature grids (n×c×size×size) with a per-image random channel scale/offset; odd images carry a 3×3 defect
    shifted in channel 0 (relative to the image's own spread). Returns (features, cell labels)."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(n, c, size, size, generator=g)
    labels = torch.zeros(n, size, size)
    for i in range(1, n, 2):
        y, x = torch.randint(2, size - 5, (2,), generator=g).tolist()
        feats[i, 0, y : y + 3, x : x + 3] += 5.0
        labels[i, y : y + 3, x : x + 3] = 1
    scale = torch.exp(torch.randn(n, c, 1, 1, generator=g))
    return feats * scale + 10 * torch.randn(n, c, 1, 1, generator=g), labels


def test_standardization_is_per_image():
    feats, _ = synthetic_grids(4, 0)
    valid = torch.ones(4, 12, 12, dtype=torch.bool)
    a = standardize_per_image(feats, valid)
    b = standardize_per_image(3.0 * feats - 7.0, valid)  # another camera gain/offset: the same inputs
    assert torch.allclose(a, b, atol=1e-4)
    assert a.flatten(2).median(dim=2).values.abs().max() < 1e-4
    assert torch.allclose(head_inputs(feats, valid, [3, 5]), head_inputs(3.0 * feats - 7.0, valid, [3, 5]), atol=1e-3)


def test_wide_statistics_extend_the_inputs():
    feats, _ = synthetic_grids(2, 3)
    valid = torch.ones(2, 12, 12, dtype=torch.bool)
    base, wide = head_inputs(feats, valid, [3, 5]), head_inputs(feats, valid, [3, 5], wide=11)
    assert base.shape[1] == input_dim(2) and wide.shape[1] == input_dim(2, wide=11) == 3 * base.shape[1] // 2
    assert torch.equal(wide[:, : base.shape[1]], base)  # old heads (no "wide" in their meta) see the same inputs
    tail = wide[:, base.shape[1] :]
    f = base[:, : tail.shape[1]]  # the statistics themselves; the wide part is their 11×11 neighbourhood mean
    assert torch.allclose(tail[:, :, 6, 6], f[:, :, 1:12, 1:12].mean((2, 3)), atol=1e-5)


def test_head_learns_synthetic_defects():
    train_f, train_y = synthetic_grids(24, 1)
    test_f, test_y = synthetic_grids(12, 2)
    valid = torch.ones(24, 12, 12, dtype=torch.bool)
    x = head_inputs(train_f, valid, [8])
    head = train_head(x.permute(0, 2, 3, 1).reshape(-1, x.shape[1]), train_y.flatten(), epochs=20, batch_size=512)
    maps = head.maps(head_inputs(test_f, valid[:12], [8]))
    assert normalcy.metrics.auroc(test_y.flatten().numpy(), maps.flatten().numpy()) > 0.95
    det = ZeroShot(**SMALL)
    img = det.image_scores(maps, valid[:12]).numpy()
    assert normalcy.metrics.auroc((test_y.flatten(1).amax(1) > 0).numpy(), img) > 0.95
    with pytest.raises(ParameterError, match="normal and anomalous"):
        train_head(x.permute(0, 2, 3, 1).reshape(-1, x.shape[1]), torch.zeros(x.shape[0] * 144))


def test_image_score_rule():
    maps = torch.zeros(2, 40, 40)
    maps[0, 10, 10], maps[0, 20, 20], maps[0, 30, 30] = 9.0, 6.0, 3.0
    maps[1] += 5.0  # a uniformly raised map: centering (median subtracted) takes it to 0
    valid = torch.ones(2, 40, 40, dtype=torch.bool)
    det = ZeroShot(**SMALL)
    assert (det.top_fraction, det.center) == (0.002, False)  # default: mean of the top 0.2 % cells, not centered
    cells = int(det.score_cells(valid)[0].sum())
    k = max(1, round(0.002 * cells))
    scores = det.image_scores(maps, valid)
    assert scores[0] == pytest.approx(sum([9.0, 6.0, 3.0][:k]) / k) and scores[1] == pytest.approx(5.0)
    det.set_params(center=True)
    assert det.image_scores(maps, valid)[1] == 0.0


def test_head_file_round_trip(tmp_path):
    head = PatchHead(7, hidden=5, seed=3)
    path = save_head(head, tmp_path / "h.safetensors", {"features": {"image_size": 64}, "trained_on": ["x"]})
    back, meta = load_head(path)
    assert meta["trained_on"] == ["x"]
    x = torch.randn(10, 7)
    assert torch.equal(head(x), back(x))
    (tmp_path / "bad.safetensors").write_bytes(b"not a head")
    with pytest.raises(ModelFileError, match="not a zero-shot head"):
        load_head(tmp_path / "bad.safetensors")
    with pytest.raises(ModelFileError, match="not found"):
        load_head(tmp_path / "missing.safetensors")


@pytest.fixture()
def small_head(tmp_path) -> str:
    """A seeded random head file whose feature settings match a 64-pixel ZeroShot."""
    det = ZeroShot(**SMALL)
    dim = input_dim(len(det.strides))
    return str(save_head(PatchHead(dim, hidden=8, seed=0), tmp_path / "head.safetensors",
                         {"features": det.feature_config(), "trained_on": ["test"]}))


def test_fit_needs_no_normal_images(small_head, test_images, tmp_path):
    images, _ = test_images
    det = create_detector("zeroshot", head=small_head, **SMALL)
    assert det.fit() is det and det.n_fit_ == 0
    result = det.score(images)
    assert np.isfinite(result.scores).all() and len(result.scores) == len(images)
    assert all(m.shape == im.shape[:2] for m, im in zip(result.maps, images))
    preds = det.predict(images[:2])
    assert all(np.isnan(p.p_value) and not p.is_anomaly for p in preds)  # no calibration without normals
    path = det.save(tmp_path / "zs.safetensors")
    back = normalcy.load(path)
    np.testing.assert_allclose(back.score(images).scores, result.scores, rtol=1e-5, atol=1e-5)


def test_fit_with_normals_calibrates(small_head, normal_images, test_images):
    with pytest.warns(UserWarning, match="12 calibration scores"):  # too few normals for alpha=0.05
        det = create_detector("zeroshot", head=small_head, **SMALL).fit(normal_images)
    assert det.n_fit_ == len(normal_images) and det.calibration_.n == len(normal_images)
    assert np.isfinite([p.p_value for p in det.predict(test_images[0][:2])]).all()


def test_intensity_follows_the_head_file(small_head, tmp_path):
    det = ZeroShot(**SMALL)
    gain_head = str(save_head(PatchHead(input_dim(len(det.strides)), hidden=8, seed=0), tmp_path / "gain.safetensors",
                              {"features": det.feature_config(), "trained_on": ["test"], "intensity": "gain"}))
    assert not create_detector("zeroshot", head=small_head, **SMALL)._gain()  # heads without the key: raw images
    assert create_detector("zeroshot", head=gain_head, **SMALL)._gain()
    assert not create_detector("zeroshot", head=gain_head, intensity=None, **SMALL)._gain()
    assert create_detector("zeroshot", head=small_head, intensity="gain", **SMALL)._gain()
    with pytest.raises(ParameterError, match="intensity"):
        create_detector("zeroshot", head=small_head, intensity="equalize", **SMALL)._gain()


def test_head_must_fit_the_features(small_head):
    with pytest.raises(ParameterError, match="trained on features"):
        create_detector("zeroshot", head=small_head, aggregate=1, **SMALL).fit()


@pytest.mark.skipif(not BUILTIN_HEAD.is_file(), reason="the packaged zero-shot head is not built yet")
def test_builtin_head_loads():
    head, meta = load_head(BUILTIN_HEAD)
    assert meta["features"] == ZeroShot().feature_config()
    assert meta["trained_on"] and "command" in meta
    assert head.w1.shape[0] == input_dim(len(ZeroShot().strides), len(meta["fractions"]), meta.get("wide", 0))


def test_bench_zero_shot_row_and_in_domain_note(tmp_path, small_head):
    from conftest import write_mvtec

    from normalcy.apps.bench.fewshot import run_fewshot_bench

    root = write_mvtec(tmp_path / "test", n_train=2, n_good=4, n_bad=2)  # "test" is in the head's trained_on
    said: list[str] = []
    rows = run_fewshot_bench(root, ["zeroshot"], {**SMALL, "head": small_head}, None, timing_images=2,
                             echo=said.append)
    assert rows[0]["shots"] == 0 and rows[0]["n_train"] == 0 and rows[0]["ms_per_image_by_chunk"] == {}
    assert "in-domain" in rows[0]["note"] and any("in-domain" in s for s in said)
