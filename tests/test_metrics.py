"""Tests for normalcy.metrics: ranking metrics vs scikit-learn, AUPRO vs a brute-force reference."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from normalcy import metrics
from normalcy.errors import ParameterError, ShapeError
from normalcy.metrics import (
    aupro,
    auroc,
    average_precision,
    f1_max,
    image_metrics,
    pixel_auroc,
    pixel_metrics,
)

SEEDS = range(5)


# --- helpers ---------------------------------------------------------------------------------------------
def _random_labels_scores(seed: int, ties: bool) -> tuple[np.ndarray, np.ndarray]:
    """Random labels with a seed-dependent class balance; scores rounded to 1 decimal when ties=True."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 400))
    labels = rng.random(n) < rng.uniform(0.1, 0.9)
    scores = rng.normal(size=n) + labels * rng.uniform(0, 1.5)
    return labels, (np.round(scores, 1) if ties else scores)


def _sklearn_f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    """Best F1 over scikit-learn's precision-recall curve (0/0 counted as 0)."""
    precision, recall, _ = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = 2 * precision * recall / (precision + recall)
    return float(np.nanmax(f1))


def _random_blob_mask(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Random blobs of varied size and connectivity (smoothed noise above a random quantile)."""
    smooth = ndimage.gaussian_filter(rng.random(shape), sigma=rng.uniform(1.0, 2.5))
    return smooth > np.quantile(smooth, rng.uniform(0.85, 0.97))


def _random_images(seed: int, ties: bool) -> tuple[list, list[np.ndarray]]:
    """A few ~32x32 images of different sizes: defective, normal, empty-mask defective, and a skipped one."""
    rng = np.random.default_rng(seed)
    masks, maps = [], []
    for i in range(6):
        shape = (int(rng.integers(20, 40)), int(rng.integers(20, 40)))
        mask = _random_blob_mask(rng, shape) if i < 3 else np.zeros(shape, bool)
        amap = rng.random(shape) + mask * rng.uniform(0.0, 0.8)
        masks.append(mask)
        maps.append((np.round(amap, 2) if ties else amap).astype(np.float32))
    masks[4] = None  # skipped image
    return masks, maps


def _reference_aupro(masks: list, maps: list[np.ndarray], max_fpr: float) -> float:
    """Brute force: label regions per mask, evaluate PRO and FPR at every distinct score, trapezoid."""
    regions, negatives, used_maps = [], [], []
    for mask, amap in zip(masks, maps):
        if mask is None:
            continue
        labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [amap[labels == r] for r in range(1, n + 1)]
        negatives.append(amap[~mask])
        used_maps.append(amap.ravel())
    neg = np.concatenate(negatives)
    thresholds = np.unique(np.concatenate(used_maps))[::-1]
    fpr = np.count_nonzero(neg[None, :] >= thresholds[:, None], axis=1) / neg.size
    pro = np.mean([np.mean(r[None, :] >= thresholds[:, None], axis=1) for r in regions], axis=0)
    fpr, pro = np.append(0.0, fpr), np.append(0.0, pro)  # threshold above every score
    j = int(np.argmax(fpr >= max_fpr))  # first point at or past max_fpr
    pro_end = pro[j - 1] + (pro[j] - pro[j - 1]) * (max_fpr - fpr[j - 1]) / (fpr[j] - fpr[j - 1])
    x, y = np.append(fpr[:j], max_fpr), np.append(pro[:j], pro_end)
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2) / max_fpr)


def _pooled(masks: list, maps: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """All pixels' (labels, scores) of the images that are not skipped."""
    kept = [(m, a) for m, a in zip(masks, maps) if m is not None]
    return np.concatenate([m.ravel() for m, _ in kept]), np.concatenate([a.ravel() for _, a in kept])


# --- image-level ranking metrics -------------------------------------------------------------------------
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", SEEDS)
def test_ranking_metrics_match_sklearn(seed: int, ties: bool) -> None:
    labels, scores = _random_labels_scores(seed, ties)
    assert auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    expected_ap = average_precision_score(labels, scores)
    assert average_precision(labels, scores) == pytest.approx(expected_ap, abs=1e-12)
    assert f1_max(labels, scores) == pytest.approx(_sklearn_f1_max(labels, scores), abs=1e-12)


def test_labels_may_be_bool_ints_or_lists() -> None:
    labels, scores = _random_labels_scores(7, ties=True)
    expected = auroc(labels, scores)
    assert auroc(labels.astype(int), scores) == expected
    assert auroc(labels.tolist(), scores.tolist()) == expected
    assert auroc(labels, scores.astype(np.float32)) == pytest.approx(expected)


def test_all_tied_scores_give_half_auc() -> None:
    assert auroc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert auroc([0, 0, 1], [0.1, 0.2, 0.3]) == 1.0
    assert f1_max([0, 0, 1], [0.1, 0.2, 0.3]) == 1.0


def test_one_class_gives_nan() -> None:
    assert np.isnan(auroc([1, 1, 1], [0.1, 0.2, 0.3]))
    assert np.isnan(auroc([0, 0], [0.1, 0.2]))
    assert np.isnan(average_precision([0, 0], [0.1, 0.2]))
    assert np.isnan(f1_max([0, 0], [0.1, 0.2]))


@pytest.mark.parametrize(
    ("labels", "scores"),
    [([0, 1, 1], [0.1, 0.2]), ([0, 1], [0.1, np.nan]), ([0, 2], [0.1, 0.2]), ([[0, 1]], [[0.1, 0.2]])],
)
def test_bad_image_inputs_raise_shape_error(labels: list, scores: list) -> None:
    with pytest.raises(ShapeError):
        auroc(labels, scores)


def test_image_metrics_dict() -> None:
    labels, scores = _random_labels_scores(3, ties=False)
    result = image_metrics(labels, scores)
    assert set(result) == {"image_auroc", "image_ap", "image_f1max"}
    assert result["image_auroc"] == auroc(labels, scores)
    assert result["image_ap"] == average_precision(labels, scores)
    assert result["image_f1max"] == f1_max(labels, scores)


# --- pixel AUROC -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", SEEDS)
def test_pixel_auroc_matches_sklearn_on_pooled_pixels(seed: int, ties: bool) -> None:
    masks, maps = _random_images(seed, ties)
    labels, scores = _pooled(masks, maps)
    assert pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_pixel_auroc_sorts_the_smaller_class_too() -> None:
    rng = np.random.default_rng(0)
    masks = [rng.random((16, 16)) < 0.8]  # more defect pixels than normal ones
    maps = [np.round(rng.random((16, 16)), 1)]
    labels, scores = _pooled(masks, maps)
    assert pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_shape_mismatch_names_the_image() -> None:
    masks = [np.zeros((4, 4), bool), np.ones((4, 5), bool)]
    maps = [np.zeros((4, 4)), np.zeros((5, 4))]
    with pytest.raises(ShapeError, match="image 1"):
        pixel_auroc(masks, maps)
    with pytest.raises(ShapeError, match="image 1"):
        aupro(masks, maps)


def test_nan_in_map_and_count_mismatch_raise() -> None:
    bad = np.zeros((3, 3))
    bad[1, 1] = np.nan
    with pytest.raises(ShapeError, match="image 0"):
        pixel_metrics([np.eye(3, dtype=bool)], [bad])
    with pytest.raises(ShapeError):
        pixel_auroc([np.eye(3, dtype=bool)], [])


def test_no_defect_pixel_gives_nan() -> None:
    masks, maps = [np.zeros((5, 5), bool), None], [np.zeros((5, 5)), np.ones((5, 5))]
    assert np.isnan(pixel_auroc(masks, maps))
    assert np.isnan(aupro(masks, maps))
    result = pixel_metrics(masks, maps)
    assert np.isnan(result["pixel_auroc"]) and np.isnan(result["aupro"])


# --- AUPRO -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("max_fpr", [0.3, 0.05, 1.0])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", SEEDS)
def test_aupro_matches_brute_force_reference(seed: int, ties: bool, max_fpr: float) -> None:
    masks, maps = _random_images(seed, ties)
    expected = _reference_aupro(masks, maps, max_fpr)
    assert aupro(masks, maps, max_fpr=max_fpr) == pytest.approx(expected, abs=1e-6)
    assert pixel_metrics(masks, maps, max_fpr=max_fpr)["aupro"] == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("seed", SEEDS)
def test_aupro_sampled_bound_path_is_exact(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "_SAMPLE_SIZE", 64)  # forces the sampled lower bound on small images
    masks, maps = _random_images(seed, ties=seed % 2 == 0)
    assert aupro(masks, maps) == pytest.approx(_reference_aupro(masks, maps, 0.3), abs=1e-6)


def test_aupro_falls_back_when_the_sample_misleads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "_SAMPLE_SIZE", 128)  # 32x32 pixels -> every 8th pixel is sampled
    amap = np.full(32 * 32, 0.1, dtype=np.float32)
    amap[::8] = 0.9  # exactly the sampled pixels are high, so the sampled bound is far too high
    amap = amap.reshape(32, 32)
    mask = np.zeros((32, 32), bool)
    mask[10:14, 11:15] = True
    amap[mask] = np.linspace(0.05, 1.0, 16, dtype=np.float32)
    lower_bounds = []
    original = metrics._negatives

    def spy(pixels: object, lower: object = None) -> np.ndarray:
        lower_bounds.append(lower)
        return original(pixels, lower)

    monkeypatch.setattr(metrics, "_negatives", spy)
    assert aupro([mask], [amap]) == pytest.approx(_reference_aupro([mask], [amap], 0.3), abs=1e-6)
    assert lower_bounds == [np.float32(0.9), None]  # the bounded gather came up short, then all negatives


@pytest.mark.parametrize("block", [1, 3, 64])
def test_blocked_search_matches_numpy(block: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "_BLOCK", block)
    rng = np.random.default_rng(block)
    ref = np.sort(rng.integers(0, 30, 500)).astype(np.float32)  # long runs of ties across blocks
    queries = np.sort(rng.integers(-2, 33, 300)).astype(np.float32)
    for side in ("left", "right"):
        expected = np.searchsorted(ref, queries, side=side)
        np.testing.assert_array_equal(metrics._searchsorted_blocked(ref, queries, side), expected)


@pytest.mark.parametrize("seed", SEEDS)
def test_small_blocks_and_negative_scores_stay_exact(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "_BLOCK", 7)
    masks, maps = _random_images(seed, ties=True)
    maps = [a - np.float32(0.5) for a in maps]  # negative scores, and both -0.0 and 0.0
    maps[0][maps[0] == 0] = np.float32(-0.0)
    labels, scores = _pooled(masks, maps)
    assert pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert aupro(masks, maps) == pytest.approx(_reference_aupro(masks, maps, 0.3), abs=1e-6)


def test_aupro_hand_cases() -> None:
    mask = np.zeros((8, 8), bool)
    mask[2:4, 2:5] = True
    mask[6, 6] = True
    assert aupro([mask], [mask.astype(float)]) == pytest.approx(1.0)  # perfect map
    assert aupro([mask], [(~mask).astype(float)]) == 0.0  # every negative above every positive
    assert aupro([mask], [np.ones((8, 8))], max_fpr=0.3) == pytest.approx(0.15)  # one tied step: diagonal


def test_aupro_uses_8_connected_regions() -> None:
    mask = np.zeros((4, 4), bool)
    mask[0, 0] = mask[1, 1] = mask[3, 3] = True  # (0,0)-(1,1) touch diagonally: 2 regions, not 3
    amap = np.full((4, 4), 0.5)
    amap[0, 0], amap[1, 1], amap[3, 3] = 0.9, 0.1, 0.1
    # PRO jumps to mean(1/2, 0) = 0.25 at FPR 0 and stays there up to max_fpr.
    assert aupro([mask], [amap]) == pytest.approx(0.25)


def test_aupro_averages_regions_not_pixels() -> None:
    mask = np.zeros((6, 6), bool)
    mask[0:2, 0:5] = True  # a 10-pixel region, fully found
    mask[5, 5] = True  # a 1-pixel region, missed
    amap = np.where(mask, 1.0, 0.5)
    amap[5, 5] = 0.0
    assert aupro([mask], [amap]) == pytest.approx(0.5)


def test_aupro_accepts_mixed_dtypes_and_integer_maps() -> None:
    masks, maps = _random_images(11, ties=True)
    expected = aupro(masks, maps)
    mixed = [a.astype(np.float64) if i % 2 else a for i, a in enumerate(maps)]
    assert aupro(masks, mixed) == pytest.approx(expected, abs=1e-12)
    as_ints = [np.round(a * 100).astype(np.int32) for a in maps]
    assert aupro(masks, as_ints) == pytest.approx(expected, abs=1e-12)


def test_invalid_max_fpr_raises() -> None:
    masks, maps = _random_images(0, ties=False)
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ParameterError):
            aupro(masks, maps, max_fpr=bad)


def test_pixel_metrics_agrees_with_separate_calls() -> None:
    masks, maps = _random_images(2, ties=True)
    result = pixel_metrics(masks, maps, max_fpr=0.2)
    assert set(result) == {"pixel_auroc", "aupro"}
    assert result["pixel_auroc"] == pytest.approx(pixel_auroc(masks, maps), abs=1e-12)
    assert result["aupro"] == pytest.approx(aupro(masks, maps, max_fpr=0.2), abs=1e-12)
