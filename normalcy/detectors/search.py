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
