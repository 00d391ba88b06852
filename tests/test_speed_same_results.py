"""Speed changes that must not change a result: faiss searching the IVF index's own lists, grey images resized as one
plane, pooling channels-last, and the positional term's blocked factor."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from normalcy.detectors.image.faiss_index import faiss_available
from normalcy.detectors.image.search import IVFIndex
from normalcy.errors import ParameterError

needs_faiss = pytest.mark.skipif(not faiss_available(),
                                 reason="faiss is not importable here: pip install 'normalcy[faiss]' (faiss-cpu)")


@pytest.fixture(scope="module")
def bank_and_queries() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(20, 16, generator=g) * 4
    bank = centres[torch.randint(0, 20, (3000,), generator=g)] + torch.randn(3000, 16, generator=g)
    return bank, centres[torch.randint(0, 20, (500,), generator=g)] + torch.randn(500, 16, generator=g)


@needs_faiss
@pytest.mark.parametrize("n_probe", [1, 3])
def test_faiss_backend_finds_the_torch_ivf_entries(bank_and_queries, n_probe):
    bank, q = bank_and_queries  # k-means order: rows are not grouped by list, so the index also reorders them
    ref = IVFIndex(bank, list_size=64, n_probe=n_probe, seed=0)
    fast = IVFIndex(bank, n_probe=n_probe, centroids=ref.centroids, assign=ref.assign, backend="faiss")
    assert ref.backend == "torch" and fast.backend == "faiss" and ref.order is not None
    (d_ref, i_ref), (d, i) = ref.search(q), fast.search(q)
    assert torch.equal(i, i_ref)  # same lists, same probes: the same entry (in the caller's row order)
    torch.testing.assert_close(d, d_ref, rtol=1e-5, atol=1e-4)
    fast.n_probe = n_probe + 1  # n_probe is read at every search, as by the torch loop
    ref.n_probe = n_probe + 1
    assert torch.equal(fast.search(q)[1], ref.search(q)[1])


def test_auto_backend_without_faiss_is_the_torch_loop(monkeypatch, bank_and_queries):
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` fails as if it were not installed
    bank, q = bank_and_queries
    index = IVFIndex(bank, list_size=64, n_probe=2, seed=0, backend="auto")
    assert index.backend == "torch" and index.search(q)[1].shape == (500,)
    with pytest.raises(ParameterError, match="backend"):
        IVFIndex(bank, list_size=64, backend="gpu")


def _reference_prepare(img: np.ndarray, inner: tuple[int, int]) -> torch.Tensor:
    """prepare_batch's stretch path as it was: resize all three channels, then scale to [0, 1]."""
    if img.shape[:2] != inner:
        img = np.array(Image.fromarray(img).resize((inner[1], inner[0]), Image.Resampling.BILINEAR))
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div_(255.0)


@pytest.mark.parametrize("canvas", [(48, 40), (17, 90), (64, 64)])
def test_grey_images_resized_as_one_plane_give_the_rgb_result(canvas):
    from normalcy.features.preprocess import is_grey, prepare_batch

    rng = np.random.default_rng(1)
    grey = np.repeat(rng.integers(0, 256, (37, 55, 1), dtype=np.uint8), 3, axis=2)
    colour = rng.integers(0, 256, (37, 55, 3), dtype=np.uint8)
    assert is_grey(grey) and not is_grey(colour) and not is_grey(grey[:, :, 0])
    batch, _ = prepare_batch([grey, colour], canvas, "stretch")
    assert torch.equal(batch[0], _reference_prepare(grey, canvas))
    assert torch.equal(batch[1], _reference_prepare(colour, canvas))
    padded, pl = prepare_batch([grey], canvas, "pad")  # replicate padding of the one plane, then three channels
    assert torch.equal(padded[0, 0], padded[0, 2])
    assert torch.equal(padded[0, :, pl[0].top : pl[0].top + pl[0].inner_h, pl[0].left : pl[0].left + pl[0].inner_w],
                       _reference_prepare(grey, (pl[0].inner_h, pl[0].inner_w)))


@pytest.mark.parametrize("aggregate", [3, 5])
def test_channels_last_pooling_gives_the_same_features(aggregate):
    from normalcy.features.extractor import PatchFeatureExtractor

    ext = PatchFeatureExtractor(aggregate=aggregate, strides=(8, 16))
    x = torch.rand(2, 3, 96, 64, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        stages = ext.net.forward_features(x, ext.strides)
        pad = aggregate // 2
        parts = [F.avg_pool2d(F.pad(f, (pad,) * 4, mode="replicate"), aggregate, stride=1) for f in stages]
        ref = torch.cat([parts[0], F.interpolate(parts[1], size=parts[0].shape[-2:], mode="bilinear",
                                                 align_corners=False)], dim=1)
        got = ext(x)
    assert got.is_contiguous() and torch.equal(got, ref)


def test_blocked_factor_stores_only_the_upper_triangle_by_blocks():
    from normalcy.detectors.image.padim import FACTOR_BLOCKS, position_factor

    a = torch.randn(5, 10, 10, generator=torch.Generator().manual_seed(4))
    precision = a @ a.transpose(1, 2) + torch.eye(10)
    blocks = position_factor(precision)
    assert len(blocks) == FACTOR_BLOCKS and sum(b.shape[1] for b in blocks) == 10
    full = torch.zeros(5, 10, 10)
    row = 0
    for b in blocks:  # each block: its rows, from the diagonal's column on
        full[:, row : row + b.shape[1], 10 - b.shape[2] :] = b
        row += b.shape[1]
    torch.testing.assert_close(full.transpose(1, 2) @ full, precision, rtol=1e-4, atol=1e-4)
    assert torch.equal(full.tril(-1), torch.zeros_like(full))
