"""Memory-bank search: exact chunked kNN, the fast greedy coreset, and the IVF index."""

from __future__ import annotations

import torch

from normalcy.detectors.image.search import IVFIndex, greedy_coreset, nearest_neighbors


def test_exact_knn_matches_cdist_under_a_tiny_budget():
    g = torch.Generator().manual_seed(0)
    q, bank = torch.randn(300, 16, generator=g), torch.randn(500, 16, generator=g)
    d, i = nearest_neighbors(q, bank, k=3, budget_mb=0)  # forces one query row per chunk
    ref = torch.cdist(q, bank).topk(3, largest=False)
    torch.testing.assert_close(d, ref.values, rtol=1e-4, atol=1e-4)
    assert torch.equal(i, ref.indices)


def _clusters(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(20, 32, generator=g) * 5
    return centres[torch.randint(0, 20, (n,), generator=g)] + torch.randn(n, 32, generator=g)


def test_coreset_covers_better_than_random_sampling():
    x = torch.cat([_clusters(20000), torch.randn(20, 32) * 3 + 40])  # 20 rare far-away points
    keep = greedy_coreset(x, 0.02, proj_dim=16, group_size=2048)
    assert keep.numel() == round(x.shape[0] * 0.02) and keep.unique().numel() == keep.numel()
    rand = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))[: keep.numel()]
    cover = nearest_neighbors(x, x[keep])[0].max()
    cover_random = nearest_neighbors(x, x[rand])[0].max()
    assert cover < cover_random  # the rare points are kept; random sampling misses them
    assert (keep >= 20000).sum() >= 10


def test_ivf_recall_and_never_underestimates():
    bank = _clusters(20000, seed=1)
    q = _clusters(2000, seed=2)
    index = IVFIndex(bank, list_size=128, n_probe=8, seed=0)
    d, i = index.search(q)
    d_exact, i_exact = nearest_neighbors(q, bank)
    recall = (i == i_exact[:, 0]).float().mean().item()
    assert recall > 0.95
    assert bool((d >= d_exact[:, 0] - 1e-3).all())
    torch.testing.assert_close(d, (q - bank[i]).norm(dim=1), rtol=1e-3, atol=1e-3)  # exact distance to what it found
