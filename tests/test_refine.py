"""The second, closer look (`refine`): tiles and their merge, the refined p-value's validity, fit/predict/save."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import texture, with_defect

import normalcy
from normalcy.calibration.conformal import conformal_p_values
from normalcy.detectors.image.refine import Refiner, axis_spans, merge_tiles, owned_spans, tile_boxes
from normalcy.errors import ParameterError


@pytest.mark.parametrize("h,w,grid,overlap", [(64, 64, (2, 2), 0.25), (321, 511, (2, 3), 0.3), (7, 5, (3, 2), 0.5),
                                                (100, 37, (1, 4), 0.0), (250, 640, (2, 2), 0.25)])
def test_merged_tiles_cover_every_pixel_exactly_once(h, w, grid, overlap):
    boxes = tile_boxes(h, w, grid, overlap)
    assert len(boxes) == grid[0] * grid[1]
    covered = np.zeros((h, w), dtype=int)
    for t, b, le, r in boxes:
        covered[t:b, le:r] += 1
    assert covered.min() >= 1  # the tiles themselves cover the image (overlaps counted twice)
    owners = merge_tiles([np.full((b - t, r - le), k, dtype=np.float32) for k, (t, b, le, r) in enumerate(boxes)],
                         h, w, grid, overlap)
    counts = np.zeros((h, w), dtype=int)
    for k in range(len(boxes)):
        counts += owners == k
    assert (counts == 1).all()  # after merging: one owner per pixel
    for axis_len, k in ((h, grid[0]), (w, grid[1])):
        own = owned_spans(axis_spans(axis_len, k, overlap))
        assert own[0][0] == 0 and own[-1][1] == axis_len
        assert all(a[1] == b[0] for a, b in zip(own[:-1], own[1:]))  # contiguous, no gap, no overlap


def test_merging_crops_of_one_map_gives_that_map_back():
    rng = np.random.default_rng(0)
    full = rng.random((90, 130)).astype(np.float32)
    boxes = tile_boxes(90, 130, (2, 3), 0.25)
    assert np.array_equal(merge_tiles([full[t:b, le:r] for t, b, le, r in boxes], 90, 130, (2, 3), 0.25), full)


def test_bad_tile_arguments_are_refused():
    with pytest.raises(ParameterError, match="overlap"):
        axis_spans(10, 2, 1.0)
    with pytest.raises(ParameterError, match="positive"):
        axis_spans(10, 0)


def _refiner(coarse_cal: np.ndarray, fine_cal: np.ndarray, band=(0.2, 4.0)) -> Refiner:
    return Refiner(fine=None, coarse_cal=coarse_cal, fine_cal=fine_cal, band=band)


@pytest.mark.parametrize("rule", ["fine", "min", "sum"])
def test_refined_p_value_is_valid_and_equals_the_coarse_one_outside_the_band(rule):
    """Exchangeable (coarse, fine) pairs: the refined p-value's false-alarm rate stays at alpha (exact)."""
    rng = np.random.default_rng(0)
    n, alpha, trials = 39, 0.1, 4000
    flagged = 0
    for _ in range(trials):
        z = rng.normal(size=(n + 1, 2))
        pairs = np.c_[z[:, 0], 0.3 * z[:, 0] + z[:, 1]]  # correlated coarse and fine scores
        ref = _refiner(pairs[:n, 0], pairs[:n, 1], band=(0.0, 5.0))
        ref.rule = rule
        ref.set_alpha(alpha)
        s, f = pairs[n]
        count = int((pairs[:n, 0] >= s).sum())
        p = ref.p_values(np.array([s]), np.array([f]))[0] if ref.in_band(np.array([count]))[0] else \
            conformal_p_values(pairs[:n, 0], np.array([s]))[0]
        flagged += p <= alpha
    rate = flagged / trials
    # exact mean floor(alpha (n+1)) / (n+1) = 0.1; 4000 trials: sd 0.0047
    assert abs(rate - 0.1) < 0.02
    ref = _refiner(np.arange(99.0), np.zeros(99))
    ref.set_alpha(0.1)
    outside = np.array([100.0, -5.0])  # above the band (coarse p 0.01 <= 0.2 alpha) and below it
    assert np.allclose(ref.p_values(outside, np.zeros(2)), conformal_p_values(ref.coarse_cal, outside))


def test_refined_p_value_reranks_inside_the_band_by_the_fine_score():
    coarse = np.arange(99.0)  # coarse p of a new score 93.5 = (1 + 6) / 100 = 0.07: in the band at alpha 0.05
    fine = np.zeros(99)
    ref = _refiner(coarse, fine)
    ref.set_alpha(0.05)
    assert ref.in_band(np.array([6]))[0]
    high, low = ref.p_values(np.array([93.5, 93.5]), np.array([1.0, -1.0]))
    assert high < 0.05 < low  # a clear fine score moves it across alpha, either way


def test_fit_refine_predict_and_model_file(tmp_path):
    rng = np.random.default_rng(0)
    det = normalcy.PaDiM(image_size=64, alpha=0.1, n_features=20, calibration_fraction=0.5, progress=False)
    train = [texture(rng, 96) for _ in range(40)]
    det.fit(train, refine=True)
    assert det.refiner_.fine_cal.shape == det.refiner_.coarse_cal.shape == (det.calibration_.n,)
    images = [texture(rng, 96) for _ in range(6)] + [with_defect(texture(rng, 96))[0] for _ in range(2)]
    plain = det.predict(images)
    refined = det.predict(images, refine=True)
    for a, b in zip(plain, refined):
        if "refined:" in b.calibration_note:
            assert b.anomaly_map.shape == a.anomaly_map.shape and b.is_anomaly == (b.p_value <= 0.1)
        else:
            assert b.p_value == a.p_value and b.is_anomaly == a.is_anomaly
    again = normalcy.load(det.save(tmp_path / "r.normalcy"))
    assert [p.p_value for p in again.predict(images, refine=True)] == [p.p_value for p in refined]
    with pytest.raises(ParameterError, match="refine=True"):
        normalcy.PaDiM(image_size=64, n_features=20, progress=False).fit(train).predict(images, refine=True)


def test_refine_refuses_cross_conformal_fits():
    rng = np.random.default_rng(1)
    det = normalcy.PaDiM(image_size=64, alpha=0.1, n_features=20, progress=False)
    with pytest.raises(ParameterError, match="hold-out"):
        det.fit([texture(rng) for _ in range(12)], refine=True)


def test_cli_fit_and_predict_with_refine(tmp_path):
    import csv

    from conftest import write_mvtec

    from normalcy.apps.cli import EXIT_OK, main

    category = write_mvtec(tmp_path / "blobs", n_train=40, n_good=6, n_bad=6)
    model = tmp_path / "m.normalcy"
    small = ["--detector", "padim", "--image-size", "64", "--param", "progress=false", "--param", "n_features=20",
             "--param", "calibration_fraction=0.5", "--alpha", "0.2"]
    assert main(["fit", str(category), "-o", str(model), "--refine", *small]) == EXIT_OK
    for flag in ([], ["--refine"]):
        out = tmp_path / f"out{len(flag)}"
        assert main(["predict", str(model), str(category / "test"), "-o", str(out), "--no-images", *flag]) == EXIT_OK
        with open(out / "results.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert len(rows) == 12
        assert any("refined:" in r["calibration_note"] for r in rows) == bool(flag)
