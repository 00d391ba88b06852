"""Memory-bank helpers shared by bank-based detectors: fast greedy coreset and chunked nearest neighbours."""

from __future__ import annotations

import math

import numpy as np
import torch

DEFAULT_BUDGET_MB = 256
CACHE_BYTES = 4 * 2**20


def nearest_neighbors(
    queries: torch.Tensor, bank: torch.Tensor, k: int = 1, budget_mb: int = DEFAULT_BUDGET_MB,
    bank_sq: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact Euclidean k-NN of each query in `bank` (Q×k distances, indices).

    Queries are processed in chunks so the Q×M distance block never exceeds `budget_mb` of memory.
    """
    queries = queries.float()
    bank = bank.float()
    if bank_sq is None:
        bank_sq = bank.pow(2).sum(1)
    k = min(k, bank.shape[0])
    rows = max(1, int(budget_mb * 2**20 // (4 * max(1, bank.shape[0]))))
    dists, idxs = [], []
    for start in range(0, queries.shape[0], rows):
        q = queries[start : start + rows]
        d2 = torch.addmm(bank_sq[None, :], q, bank.T, beta=1.0, alpha=-2.0)
        d2.add_(q.pow(2).sum(1, keepdim=True))
        if k == 1:
            v, i = d2.min(dim=1, keepdim=True)
        else:
            v, i = d2.topk(k, dim=1, largest=False)
        dists.append(v.clamp_(min=0).sqrt_())
        idxs.append(i)
    return torch.cat(dists), torch.cat(idxs)


def greedy_coreset(
    features: torch.Tensor, ratio: float, proj_dim: int = 64, group_size: int = 2048, seed: int = 0
) -> torch.Tensor:
    """Indices of an approximate greedy k-center coreset (PatchCore's sampler), fast on large sets.

    Two approximations keep it fast without losing coverage: distances are computed after a Gaussian random
    projection to `proj_dim` dims (Johnson-Lindenstrauss), and the points are split at random into groups of
    about `group_size` that run greedy selection side by side (one batched matrix product per step), so a step
    costs N·d instead of the naive loop's N·C and there are ratio·group_size steps instead of ratio·N.
    """
    n = features.shape[0]
    m_total = max(1, int(round(n * ratio)))
    if ratio >= 1.0 or m_total >= n:
        return torch.arange(n)
    gen = torch.Generator().manual_seed(seed)
    x = features.float()
    if x.shape[1] > proj_dim:
        x = x @ (torch.randn(x.shape[1], proj_dim, generator=gen) / math.sqrt(proj_dim))
    perm = torch.randperm(n, generator=gen)
    n_groups = max(1, math.ceil(n / group_size))
    g = math.ceil(n / n_groups)
    pad = n_groups * g - n
    order = torch.cat([perm, perm[:pad]]) if pad else perm
    xg = x[order].view(n_groups, g, -1)
    steps = math.ceil(m_total / n_groups)
    # run blocks of groups whose data stays in cache through all steps (memory traffic dominates here)
    per_block = max(1, CACHE_BYTES // (g * x.shape[1] * 4))
    picks = []
    for b0 in range(0, n_groups, per_block):
        valid = torch.ones(min(per_block, n_groups - b0), g, dtype=torch.bool)
        if pad and b0 + valid.shape[0] == n_groups:
            valid[-1, g - pad :] = False  # padding copies are never selected
        picks.append(_greedy_block(xg[b0 : b0 + per_block].contiguous(), valid, steps))
    sel = torch.cat(picks)  # G×steps (positions within groups)
    flat = order.view(n_groups, g).gather(1, sel).T.reshape(-1)  # step-major: earlier picks first
    _, first = np.unique(flat.numpy(), return_index=True)
    return flat[np.sort(first)[:m_total]]


def _greedy_block(xg: torch.Tensor, valid: torch.Tensor, steps: int) -> torch.Tensor:
    """Greedy k-center in each of the B groups of `xg` (B×g×d) side by side; B×steps chosen positions."""
    n_groups, g, _ = xg.shape
    sq = xg.pow(2).sum(-1)
    min_d = torch.full((n_groups, g), float("inf")).masked_fill_(~valid, float("-inf"))
    rows = torch.arange(n_groups)
    cur = torch.zeros(n_groups, dtype=torch.long)
    chosen = torch.empty(n_groups, steps, dtype=torch.long)
    for step in range(steps):
        chosen[:, step] = cur
        c = xg[rows, cur]  # B×d
        d = torch.baddbmm(sq[:, :, None], xg, c[:, :, None], alpha=-2.0)[..., 0]
        d += c.pow(2).sum(-1, keepdim=True)
        torch.minimum(min_d, d, out=min_d)
        cur = min_d.argmax(dim=1)
    return chosen


def kmeans(x: torch.Tensor, k: int, iters: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain Lloyd k-means (seeded, init from a random sample); returns (centroids k×d, assignment N)."""
    gen = torch.Generator().manual_seed(seed)
    cent = x[torch.randperm(x.shape[0], generator=gen)[:k]].clone()
    assign = torch.zeros(x.shape[0], dtype=torch.long)
    for _ in range(iters):
        _, idx = nearest_neighbors(x, cent, 1)
        assign = idx[:, 0]
        sums = torch.zeros_like(cent).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).clamp(min=1)[:, None].to(x.dtype)
        moved = sums / counts
        empty = torch.bincount(assign, minlength=k) == 0
        cent = torch.where(empty[:, None], cent, moved)  # an empty cluster keeps its old centre
    return cent, assign


class IVFIndex:
    """Inverted-file approximate nearest neighbour over a fixed bank (k-means lists, `n_probe` lists per query).

    Each query is compared with the entries of its `n_probe` nearest lists only, so a search costs about
    n_probe·list_size distances instead of the bank size; every distance it returns is exact for the entry found
    (it can only miss the true nearest neighbour, never under-estimate a distance).
    """

    def __init__(self, bank: torch.Tensor, list_size: int = 128, n_probe: int = 8, seed: int = 0,
                 centroids: torch.Tensor | None = None, assign: torch.Tensor | None = None) -> None:
        self.bank = bank.float()
        self.n_probe = n_probe
        if centroids is None or assign is None:
            k = max(1, bank.shape[0] // list_size)
            centroids, assign = kmeans(self.bank, k, seed=seed)
        self.centroids, self.assign = centroids, assign
        order = torch.argsort(assign, stable=True)
        counts = torch.bincount(assign, minlength=centroids.shape[0])
        self.starts = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
        self.order = order
        self.sorted_bank = self.bank[order].contiguous()
        self.sorted_sq = self.sorted_bank.pow(2).sum(1)

    def search(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Approximate 1-NN: (Q distances, Q bank indices)."""
        q = queries.float()
        p = min(self.n_probe, self.centroids.shape[0])
        _, probes = nearest_neighbors(q, self.centroids, p)  # Q×p list ids
        pair_q = torch.arange(q.shape[0]).repeat_interleave(p)
        pair_l = probes.reshape(-1)
        by_list = torch.argsort(pair_l, stable=True)
        pair_q, pair_l = pair_q[by_list], pair_l[by_list]
        bounds = torch.searchsorted(pair_l, torch.arange(self.centroids.shape[0] + 1))
        best_d = torch.full((pair_q.shape[0],), float("inf"))
        best_i = torch.zeros(pair_q.shape[0], dtype=torch.long)
        q_sq = q.pow(2).sum(1)
        for lst in torch.nonzero(bounds[1:] > bounds[:-1])[:, 0].tolist():
            a, b = int(bounds[lst]), int(bounds[lst + 1])
            s, e = int(self.starts[lst]), int(self.starts[lst + 1])
            if e == s:
                continue
            qi = pair_q[a:b]
            d2 = torch.addmm(self.sorted_sq[None, s:e], q[qi], self.sorted_bank[s:e].T, alpha=-2.0)
            d2.add_(q_sq[qi, None])
            v, i = d2.min(dim=1)
            best_d[a:b], best_i[a:b] = v, i + s
        # back to query order, then the best over each query's probes
        inv = torch.empty_like(by_list)
        inv[by_list] = torch.arange(by_list.shape[0])
        best_d, best_i = best_d[inv].view(-1, p), best_i[inv].view(-1, p)
        v, j = best_d.min(dim=1)
        return v.clamp_(min=0).sqrt_(), self.order[best_i.gather(1, j[:, None])[:, 0]]
