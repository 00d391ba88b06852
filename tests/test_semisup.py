"""Semi-supervised PatchCore: a few labelled anomalies must help where the normal-only model is weak."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import normalcy as nc
from normalcy.detectors.image.patchcore import PatchCore
from normalcy.detectors.image.semisup import SemiSupervised
from normalcy.detectors.image.semisup_head import mask_to_grid, positive_cells, smote
from normalcy.errors import MaskMismatchError, ParameterError
from normalcy.features.preprocess import placement_for
from normalcy.metrics import auroc, pixel_auroc
from tests.conftest import texture

SMALL = {"image_size": 64, "progress": False, "batch_size": 8, "alpha": 0.2}  # alpha 0.2: a 20% hold-out suffices


def faint_square(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A slightly brighter 14×14 square: hard for a normal-only model on this noisy stripe texture."""
    out = img.astype(np.int16)
    mask = np.zeros(img.shape[:2], bool)
    y, x = rng.integers(8, 40, 2)
    mask[y : y + 14, x : x + 14] = True
    out[mask] += 14
    return out.clip(0, 255).astype(np.uint8), mask


@pytest.fixture(scope="module")
def case():
    rng = np.random.default_rng(0)
    normals = [texture(rng) for _ in range(20)]
    labelled = [faint_square(texture(rng), rng) for _ in range(3)]
    goods = [texture(rng) for _ in range(10)]
    bads = [faint_square(texture(rng), rng) for _ in range(10)]
    test = goods + [b for b, _ in bads]
    masks = [np.zeros((64, 64), bool)] * 10 + [m for _, m in bads]
    return normals, labelled, test, np.r_[np.zeros(10), np.ones(10)], masks


@pytest.fixture(scope="module")
def fitted(case):
    normals, labelled, *_ = case
    return SemiSupervised(n_synthetic=4, **SMALL).fit(normals, anomalies=[a for a, _ in labelled],
                                                      masks=[m for _, m in labelled])


def test_labelled_anomalies_beat_normal_only(case, fitted):
    normals, _, test, labels, masks = case
    base = PatchCore(**SMALL).fit(normals).score(test)
    semi = fitted.score(test)
    assert fitted.head_ is not None and fitted.n_labelled_ == 3
    assert auroc(labels, semi.scores) >= auroc(labels, base.scores) + 0.15  # base: 0.83 with the shrunk Gaussian
    assert pixel_auroc(masks, semi.maps) > pixel_auroc(masks, base.maps)


def test_save_load_round_trip(case, fitted, tmp_path):
    test = case[2]
    path = fitted.save(tmp_path / "semi.normalcy")
    back = nc.load(path)
    assert isinstance(back, SemiSupervised) and back.n_labelled_ == 3
    np.testing.assert_allclose(back.score(test).scores, fitted.score(test).scores, rtol=1e-5, atol=1e-6)


def test_without_labels_or_synthesis_it_is_patchcore(case):
    normals, _, test, *_ = case
    semi = SemiSupervised(n_synthetic=0, **SMALL).fit(normals[:10])
    assert semi.head_ is None
    plain = PatchCore(**SMALL, backbone=semi.backbone, resize_mode="stretch", standardize=False, positional=False,
                      intensity=None)
    np.testing.assert_allclose(semi.score(test).scores, plain.fit(normals[:10]).score(test).scores)


def test_labelled_input_errors(case):
    normals, labelled, *_ = case
    det = SemiSupervised(n_synthetic=0, **SMALL)
    with pytest.raises(ParameterError, match="masks"):
        det.fit(normals, anomalies=[labelled[0][0]], masks=[])
    with pytest.raises(MaskMismatchError):
        det.fit(normals, anomalies=[labelled[0][0]], masks=[np.ones((10, 10), bool)])


def test_mask_to_grid_and_positive_cells():
    mask = np.zeros((40, 80), bool)
    mask[:20, 40:] = True  # top-right quarter
    pl = placement_for(40, 80, 64, "stretch")
    cover = mask_to_grid(mask, pl, 64, (8, 8))
    assert cover[:4, 4:].min() > 0.9 and cover[4:, :].max() < 0.1 and cover[:, :4].max() < 0.1
    valid = torch.ones(8, 8, dtype=torch.bool)
    assert positive_cells(cover, torch.zeros(8, 8), valid).sum() == 16
    dist = torch.zeros(8, 8)
    dist[2, 3], dist[5, 5] = 5.0, 4.0
    top = positive_cells(None, dist, valid, top_k=2)
    assert top.sum() == 2 and top[2, 3] and top[5, 5]


def test_smote_points_lie_between_neighbours():
    pts = torch.tensor([[0.0, 0.0], [1.0, 0.0], [10.0, 10.0], [11.0, 10.0]])
    new = smote(pts, 50, seed=0, k=1)
    assert new.shape == (50, 2)
    near_first = new[:, 0] <= 1.0
    assert torch.all(new[near_first, 1] == 0) and torch.all(new[~near_first, 1] == 10)  # never across clusters
    assert torch.equal(smote(pts, 50, seed=0, k=1), new)
