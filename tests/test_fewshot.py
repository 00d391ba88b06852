"""Few-shot and zero-shot detectors: bad input, the odd image in a batch, model files, the few-shot bench."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

import normalcy
from normalcy.detectors import create_detector
from normalcy.detectors.image.fewshot import sample_references, views
from normalcy.errors import DataError, ParameterError

SMALL = {"image_size": 64, "progress": False}
FEW = ["fewshot", "dictionary", "reference", "inp"]


def test_sample_references_rejects_k_above_available(normal_images):
    assert len(sample_references(normal_images, 4, seed=0)) == 4
    with pytest.raises(ParameterError, match="only 12 normal images"):
        sample_references(normal_images, 13)
    with pytest.raises(ParameterError):
        sample_references(normal_images, 0)


def test_views_and_bad_augment():
    import torch

    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    assert views(x, "none").shape[0] == 2 and views(x, "flip").shape[0] == 8 and views(x, "dihedral").shape[0] == 16
    with pytest.raises(ParameterError, match="augment"):
        views(x, "spin")


@pytest.mark.parametrize("name", FEW)
def test_one_reference_scores_but_cannot_calibrate(name, normal_images, test_images):
    images, labels = test_images
    with pytest.warns(UserWarning, match="p-values are NaN"):  # transfer off: conformal only
        det = create_detector(name, **SMALL, transfer_table=None).fit(normal_images[:1])
    result = det.score(images)
    assert normalcy.metrics.auroc(labels, result.scores) > 0.9
    assert all(np.isnan(p.p_value) and not p.is_anomaly for p in det.predict(images[:2]))


def test_mixed_reference_sizes_are_resized(normal_images, test_images):
    images, labels = test_images
    taller = np.pad(normal_images[2], ((0, 16), (0, 0), (0, 0)), "reflect")
    refs = [normal_images[0], normal_images[1][:48, :40], taller]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        det = create_detector("fewshot", **SMALL).fit(refs)
    assert normalcy.metrics.auroc(labels, det.score(images).scores) > 0.9


def test_musc_batch_too_small_and_fit_without_data(normal_images):
    det = create_detector("musc", **SMALL).fit()
    assert det.calibration_.n == 0
    with pytest.raises(DataError, match="at least 2 images"):
        det.score(normal_images[:1])
    preds = det.predict(normal_images[:3])
    assert len(preds) == 3 and all(np.isnan(p.p_value) for p in preds)


def test_musc_finds_the_odd_image(normal_images, test_images):
    images, _ = test_images
    batch = list(normal_images[:9]) + [images[7]]  # one defective image among normal ones
    result = create_detector("musc", **SMALL).fit().score(batch)
    assert int(np.argmax(result.scores)) == 9
    m = result.maps[9]
    assert m[26:38, 26:38].mean() > np.percentile(m, 90)


def test_musc_chunks_are_balanced():
    det = create_detector("musc", chunk_size=32)
    sizes = [len(c) for c in det.chunks(65)]
    assert sum(sizes) == 65 and min(sizes) >= 21
    assert sorted(np.concatenate(det.chunks(65)).tolist()) == list(range(65))


def test_musc_rescore_pulls_scores_towards_look_alikes():
    import torch

    desc = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [0.01, 1.0]]), dim=1)
    scores = torch.tensor([1.0, 3.0, 10.0, 10.0], dtype=torch.float64)
    det = create_detector("musc", rescore_neighbors=1)
    assert torch.equal(det.rescore(scores, desc), scores)  # k = 1 is the image alone
    det.set_params(rescore_neighbors=2, rescore_weight=1.0)
    out = det.rescore(scores, desc)
    assert 1.0 < out[0] < 2.0 and 2.0 < out[1] < 3.0  # each moves halfway-ish towards its twin, not to 10
    assert torch.allclose(out[2:], scores[2:])
    with pytest.raises(ParameterError, match="rescore_weight"):
        det.set_params(rescore_weight=1.5).rescore(scores, desc)


@pytest.mark.parametrize("name", [*FEW, "musc"])
def test_round_trip(name, normal_images, test_images, tmp_path):
    images, _ = test_images
    det = create_detector(name, **SMALL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 4 calibration scores cannot reach alpha: warned, expected here
        det.fit(normal_images[:4]) if name != "musc" else det.fit(normal_images)
    back = normalcy.load(det.save(tmp_path / "m.normalcy"))
    batch = list(normal_images) + list(images) if name == "musc" else images
    a, b = det.score(batch), back.score(batch)
    np.testing.assert_array_equal(a.scores, b.scores)
    for x, y in zip(a.maps, b.maps):
        np.testing.assert_array_equal(x, y)
    assert back.get_params() == det.get_params()
    np.testing.assert_array_equal(back.calibration_.scores, det.calibration_.scores)


def test_reference_one_per_class_picks_the_right_class(normal_images, test_images):
    images, labels = test_images
    other = [np.full((64, 64, 3), (30, 160, 60), np.uint8)]  # a second "class": a flat green plate
    det = create_detector("reference", **SMALL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        det.fit([normal_images[0], *other])
    assert normalcy.metrics.auroc(labels, det.score(images).scores) > 0.9


def test_bench_fewshot_rows_have_shots_and_seed(tmp_path):
    from conftest import write_mvtec

    from normalcy.apps.bench.fewshot import run_fewshot_bench

    root = write_mvtec(tmp_path / "tiny", n_train=5, n_good=3, n_bad=3)
    out = tmp_path / "r.json"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = run_fewshot_bench(root, ["fewshot"], {**SMALL}, out, timing_images=2, shots=[1, 2], seeds=[0, 1],
                                 echo=lambda *_: None)
    data = json.loads(out.read_text())["results"]
    assert len(rows) == len(data) == 6  # 2 shots × (2 seeds + 1 mean row)
    for key in ("image_auroc", "pixel_auroc", "aupro", "predict_ms_median", "calibration", "shots", "seed"):
        assert all(key in r for r in data)
    assert [r["seed"] for r in data] == [0, 1, "mean", 0, 1, "mean"]
    assert "image_auroc_std" in data[2] and data[2]["shots"] == 1
    with pytest.raises(ParameterError, match="exceeds"):
        run_fewshot_bench(root, ["fewshot"], {**SMALL}, None, 2, shots=[6], echo=lambda *_: None)


def test_bench_musc_zero_shot(tmp_path):
    from conftest import write_mvtec

    from normalcy.apps.bench.fewshot import run_fewshot_bench

    root = write_mvtec(tmp_path / "tiny", n_train=2, n_good=6, n_bad=2)
    rows = run_fewshot_bench(root, ["musc"], {**SMALL}, None, timing_images=2, echo=lambda *_: None)
    assert rows[0]["n_train"] == 0 and rows[0]["shots"] == 0 and rows[0]["ms_per_image_by_chunk"]


def test_erode_drops_the_border_band():
    import torch

    from normalcy.detectors.image.common import erode

    inner = erode(torch.ones(1, 6, 6, dtype=torch.bool), 1)
    assert inner.sum() == 16 and not inner[0, 0].any() and inner[0, 1:5, 1:5].all()
    tiny = torch.ones(1, 2, 2, dtype=torch.bool)
    assert erode(tiny, 1).all()  # never erodes to nothing


def test_canvas_keeps_the_aspect_of_long_strips():
    from normalcy.detectors.image.fewshot import canvas_shape

    assert canvas_shape(640, 254, 256, "keep", 16) == (640, 256)  # KolektorSDD: not squashed 2.5× into a square
    assert canvas_shape(640, 254, 256, "square", 16) == (256, 256)
    assert canvas_shape(100, 100, 256, "keep", 16) == (256, 256)
    assert canvas_shape(5000, 100, 256, "keep", 16) == (1024, 256)  # capped at 4× image_size
    with pytest.raises(ParameterError, match="aspect"):
        canvas_shape(10, 20, 256, "wide", 16)


def test_tall_strips_with_a_thin_crack(normal_images):
    rng = np.random.default_rng(3)

    def strip():
        return np.concatenate([normal_images[int(i)] for i in rng.choice(12, 3)], axis=0)  # 192×64

    refs = [strip()]
    goods = [strip() for _ in range(4)]
    bads = []
    for _ in range(4):
        s = strip()
        s[90:130, 30:32] = 250  # a thin vertical crack, 2 px wide
        bads.append(s)
    det = create_detector("fewshot", **SMALL, transfer_table=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        det.fit(refs)
    result = det.score(goods + bads)
    assert all(m.shape == (192, 64) for m in result.maps)
    assert normalcy.metrics.auroc(np.array([0] * 4 + [1] * 4), result.scores) == 1.0


def test_gain_option_scores_a_darker_copy_alike_and_checks_its_value(normal_images, test_images, tmp_path):
    images, _ = test_images
    even = [(im // 2) * 2 for im in images[:4]]  # even grey levels: halving them is exact in uint8
    half = [im // 2 for im in even]
    det = create_detector("fewshot", **SMALL).fit(normal_images[:2])  # intensity="auto": gain without a prior
    raw = create_detector("fewshot", intensity=None, **SMALL).fit(normal_images[:2])
    # the gain is divided out before the backbone (up to one grey level of rounding); without it, it is not
    gained = np.abs(det.score(half).scores - det.score(even).scores).max()
    plain = np.abs(raw.score(half).scores - raw.score(even).scores).max()
    assert gained < 0.1 * plain
    assert det._gain() and create_detector("fewshot", intensity="gain", prior="builtin")._gain()
    # with a prior, "auto" follows its head file: the shipped head is gain-trained, one without the key saw raw images
    from normalcy.detectors.image.zeroshot import PatchHead, ZeroShot, input_dim, save_head

    assert create_detector("fewshot", prior="builtin")._gain()
    zs = ZeroShot()
    raw_head = save_head(PatchHead(input_dim(len(zs.strides)), hidden=8, seed=0), tmp_path / "raw.safetensors",
                         {"features": zs.feature_config(), "trained_on": ["test"]})
    assert not create_detector("fewshot", prior=str(raw_head))._gain()
    with pytest.raises(ParameterError, match="intensity"):
        create_detector("fewshot", intensity="equalize", **SMALL).fit(normal_images[:2])


def test_fewshot_files_from_before_the_gain_load_without_it(normal_images, tmp_path):
    from normalcy.store import _rebuild, read_file

    path = create_detector("fewshot", **SMALL).fit(normal_images[:2]).save(tmp_path / "fs.normalcy")
    meta, arrays = read_file(path)
    assert meta["params"]["intensity"] == "auto"
    del meta["params"]["intensity"]
    assert _rebuild(path, meta, arrays, check_backbone=False).intensity is None


def test_fewshot_files_from_before_top_cells_score_with_the_max(normal_images, test_images, tmp_path):
    from normalcy.store import _rebuild, read_file

    images, _ = test_images
    fitted = create_detector("fewshot", top_cells=1, **SMALL).fit(normal_images[:2])
    path = fitted.save(tmp_path / "fs.normalcy")
    meta, arrays = read_file(path)
    assert meta["params"]["top_cells"] == 1
    del meta["params"]["top_cells"], meta["params"]["top_fraction"]  # as written before they existed
    old = _rebuild(path, meta, arrays, check_backbone=False)
    assert old.top_cells == 1 and old.top_fraction == 0.0
    np.testing.assert_allclose(old.score(images[:3]).scores, fitted.score(images[:3]).scores, rtol=1e-6)
    assert create_detector("fewshot").top_cells == 3


def test_top_cells_averages_the_highest_scored_cells():
    import torch

    maps = torch.zeros(1, 8, 8)
    maps[0, 3, 3], maps[0, 4, 4], maps[0, 4, 3] = 9.0, 6.0, 3.0
    maps[0, 0, 0] = 100.0  # in the border band: never scored
    valid = torch.ones(1, 8, 8, dtype=torch.bool)
    one = create_detector("fewshot", border=0.125, top_cells=1, **SMALL)
    three = create_detector("fewshot", border=0.125, **SMALL)  # the default: top_cells=3
    assert float(one.image_scores(maps, valid)[0]) == 9.0  # max minus the median cell (0)
    assert float(three.image_scores(maps, valid)[0]) == 6.0  # (9 + 6 + 3) / 3
    assert float(create_detector("fewshot", border=0.125, top_cells=1000, **SMALL).image_scores(maps, valid)[0]) \
        == pytest.approx(18.0 / 36)  # more than the 36 scored cells: the mean of all of them
    with pytest.raises(ParameterError, match="top_cells"):
        create_detector("fewshot", top_cells=0, **SMALL).image_scores(maps, valid)


def test_top_fraction_takes_a_share_of_each_images_scored_cells():
    import torch

    maps = torch.zeros(2, 8, 8)
    maps[:, 2:6, 2:6] = torch.arange(16.0).view(4, 4)  # 16 distinct values inside the band
    valid = torch.ones(2, 8, 8, dtype=torch.bool)
    valid[1, :, 5:] = False  # the second image has fewer scored cells: its own share is smaller
    det = create_detector("fewshot", border=0.125, top_cells=1, top_fraction=0.1, center=False, **SMALL)
    s = det.image_scores(maps, valid)
    assert float(s[0]) == pytest.approx((15 + 14 + 13 + 12) / 4)  # 10 % of 36 cells: 4
    assert float(s[1]) == pytest.approx((13 + 12) / 2)  # 10 % of its 18 scored cells: 2
    with pytest.raises(ParameterError, match="top_fraction"):
        create_detector("fewshot", top_fraction=1.0, **SMALL).image_scores(maps, valid)


def test_window_distances_match_a_brute_force_search():
    """The reference detector's window search: per query cell, the nearest valid reference cell within ±window."""
    import torch

    from normalcy.detectors.image.reference import window_distances

    g = torch.Generator().manual_seed(0)
    q, refs = torch.randn(2, 5, 6, 7, generator=g), torch.randn(2, 3, 5, 6, 7, generator=g)
    valid = torch.rand(2, 3, 6, 7, generator=g) > 0.2
    got = window_distances(q, refs, valid, window=1)
    want = torch.full((2, 3, 6, 7), float("inf"))
    for b in range(2):
        for k in range(3):
            for y in range(6):
                for x in range(7):
                    for yy in range(max(0, y - 1), min(6, y + 2)):
                        for xx in range(max(0, x - 1), min(7, x + 2)):
                            if valid[b, k, yy, xx]:
                                d = (q[b, :, y, x] - refs[b, k, :, yy, xx]).norm()
                                want[b, k, y, x] = torch.minimum(want[b, k, y, x], d)
    found = torch.isfinite(want)
    assert found.any() and torch.allclose(got[found], want[found], atol=1e-4)
    assert (got[~found] > 100).all()  # no valid cell in the window: a far distance, never a match
