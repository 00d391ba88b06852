"""Large memory banks: memory-mapped banks (streamed exact and in-place IVF search) and the faiss backends."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from normalcy.detectors import PatchCore
from normalcy.detectors.image.bank import open_bank, streamed_nearest, write_bank, write_list_ordered
from normalcy.detectors.image.faiss_index import FaissIndex, faiss_available
from normalcy.detectors.image.search import IVFIndex, nearest_neighbors, train_lists
from normalcy.errors import MissingDependencyError, ModelFileError, ParameterError
from normalcy.store import load

needs_faiss = pytest.mark.skipif(not faiss_available(),
                                 reason="faiss is not importable here: pip install 'normalcy[faiss]' (faiss-cpu)")


def _clusters(n: int, seed: int, dim: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(20, dim, generator=torch.Generator().manual_seed(99)) * 5
    return centres[torch.randint(0, 20, (n,), generator=g)] + torch.randn(n, dim, generator=g)


@pytest.fixture(scope="module")
def clustered() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A 20k × 32 clustered bank, 1,000 queries from the same distribution, and the exact 1-NN indices."""
    bank, q = _clusters(20000, 1), _clusters(1000, 2)
    return bank, q, nearest_neighbors(q, bank)[1][:, 0]


def test_streamed_search_over_a_mapped_bank_equals_in_memory_search(tmp_path, clustered):
    bank, q, _ = clustered
    write_bank(tmp_path / "b.npy", bank)
    mapped = open_bank(tmp_path / "b.npy", list(bank.shape))
    assert isinstance(mapped, np.memmap) and not mapped.flags.writeable
    for k in (1, 3):
        d_ref, i_ref = nearest_neighbors(q, bank, k)
        d, i = streamed_nearest(q, mapped, k, chunk_rows=1500)  # 14 chunks, the last one partial
        assert torch.equal(i, i_ref)
        torch.testing.assert_close(d, d_ref, rtol=1e-5, atol=1e-5)


def test_ivf_searches_a_list_ordered_mapped_bank_in_place(tmp_path, clustered):
    bank, q, exact = clustered
    cent, assign = train_lists(bank, list_size=128, seed=0, train_rows=8000)
    order = torch.argsort(assign, stable=True)
    sorted_bank, sorted_assign = bank[order].contiguous(), assign[order]
    in_memory = IVFIndex(sorted_bank, n_probe=8, centroids=cent, assign=sorted_assign)
    assert in_memory.sorted_bank is in_memory.bank  # list order: no second copy
    write_bank(tmp_path / "b.npy", bank)
    file_assign, file_order = write_list_ordered(tmp_path / "s.npy", open_bank(tmp_path / "b.npy"), assign, 3000)
    assert torch.equal(file_assign, sorted_assign) and torch.equal(file_order, order)
    mapped = IVFIndex(open_bank(tmp_path / "s.npy"), n_probe=8, centroids=cent, assign=sorted_assign)
    d_mem, i_mem = in_memory.search(q)
    d_map, i_map = mapped.search(q)
    assert torch.equal(i_mem, i_map) and torch.equal(d_mem, d_map)
    assert (order[i_map] == exact).float().mean().item() > 0.95  # recall@1 with lists trained on a sample
    write_bank(tmp_path / "u.npy", bank)
    unsorted = open_bank(tmp_path / "u.npy")
    with pytest.raises(ParameterError, match="list order"):
        IVFIndex(unsorted, centroids=cent, assign=assign)


@needs_faiss
@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_faiss_recall_and_exact_distances(clustered, kind):
    bank, q, exact = clustered
    cent, assign = train_lists(bank, list_size=128, seed=0)
    index = FaissIndex(bank, kind, n_probe=8, centroids=cent)
    d, i = index.search(q)
    assert (i == exact).float().mean().item() > 0.95
    torch.testing.assert_close(d, (q - bank[i]).norm(dim=1), rtol=1e-3, atol=1e-3)  # exact distance to the hit


def test_asking_for_faiss_without_faiss_names_the_extra(monkeypatch, clustered):
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` fail as if it were not installed
    with pytest.raises(MissingDependencyError, match=r"normalcy\[faiss\]"):
        FaissIndex(clustered[0], "hnsw")
    det = PatchCore(search="faiss-hnsw")
    with pytest.raises(MissingDependencyError, match="faiss-cpu"):
        det._set_bank(clustered[0][:100])


def _fit(normal_images, **params) -> PatchCore:
    return PatchCore(image_size=64, progress=False, coreset_ratio=0.5, alpha=0.2, **params).fit(normal_images)


@pytest.mark.parametrize("search", ["exact", "ivf"])
def test_mmap_bank_model_scores_identically_to_the_inline_model(tmp_path, normal_images, test_images, search):
    images, _ = test_images
    inline = _fit(normal_images, search=search, reweight=True, positional=False)  # reweight needs the plain NN score
    path = tmp_path / "m.normalcy"
    inline.set_params(bank_storage="mmap").save(path)
    sidecar = tmp_path / "m.normalcy.bank.npy"
    assert sidecar.is_file()
    loaded = load(path)
    assert isinstance(loaded.memory_bank_, np.memmap)
    ref, got = inline.score(images), loaded.score(images)
    np.testing.assert_array_equal(got.scores, ref.scores)
    for a, b in zip(got.maps, ref.maps):
        np.testing.assert_array_equal(a, b)
    inline.set_params(bank_storage="inline").save(tmp_path / "inline.normalcy")
    assert isinstance(load(tmp_path / "inline.normalcy").memory_bank_, torch.Tensor)  # default: one file


def test_mmap_bank_sidecar_missing_or_replaced_is_a_clear_error(tmp_path, normal_images):
    det = _fit(normal_images, bank_storage="mmap")
    path = det.save(tmp_path / "m.normalcy")
    sidecar = tmp_path / "m.normalcy.bank.npy"
    bank = np.load(sidecar)
    np.save(sidecar, bank + 1)
    with pytest.raises(ModelFileError, match="checksum"):
        load(path)
    sidecar.unlink()
    with pytest.raises(ModelFileError, match="bank.npy"):
        load(path)


@needs_faiss
@pytest.mark.parametrize("search", ["faiss-ivf", "faiss-hnsw"])
def test_patchcore_with_faiss_matches_exact_scores_closely(normal_images, test_images, search):
    images, labels = test_images
    exact = _fit(normal_images, search="exact").score(images).scores
    approx = _fit(normal_images, search=search).score(images).scores
    assert np.all(approx >= exact - 1e-4)  # an approximate search can only miss closer entries
    np.testing.assert_allclose(approx, exact, rtol=0.05)
    assert approx[labels == 1].min() > approx[labels == 0].max()
