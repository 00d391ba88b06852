"""Memory-bank helpers shared by bank-based detectors: fast greedy coreset and chunked nearest neighbours."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from normalcy.errors import ParameterError

DEFAULT_BUDGET_MB = 256
CACHE_BYTES = 4 * 2**20
QUERY_PAIRS = 16384  # IVF (query, probed list) pairs searched at once: 4,096 queries at n_probe 4, 8,192 at 2;
# the gathered pairs stay ~10 MB, and each list gets one larger product instead of several small ones
IVF_BACKENDS = ("torch", "faiss", "auto")
# "auto" hands a call to faiss only up to this many queries (about two images): faiss scans its lists query by query,
# the torch loop runs one product per list for all the call's queries, so it wins on large calls (measured side by
# side on 20k/102k-row clustered banks, one thread: faiss faster at ~1,000 queries, slower by 15-50 % at 10,000)
FAISS_MAX_QUERIES = 2048
CHUNK_ROWS = 65536  # bank rows read at once from a memory-mapped bank (≈40 MB at 152 dims)

Bank = torch.Tensor | np.ndarray  # an in-memory tensor, or a float32 array memory-mapped from a .npy file


def rows(bank: Bank, start: int, stop: int) -> torch.Tensor:
    """Rows start:stop of a bank as a float32 tensor (a view in memory; a copy of just those rows if mapped)."""
    if isinstance(bank, torch.Tensor):
        return bank[start:stop]
    return torch.from_numpy(np.array(bank[start:stop], dtype=np.float32))


def iter_chunks(bank: Bank, chunk_rows: int = CHUNK_ROWS) -> Iterator[tuple[int, torch.Tensor]]:
    """(first row, rows) chunks covering a bank in order, so a mapped bank is never read whole."""
    for start in range(0, bank.shape[0], chunk_rows):
        yield start, rows(bank, start, start + chunk_rows)


def squared_norms(bank: Bank, chunk_rows: int = CHUNK_ROWS) -> torch.Tensor:
    """Squared L2 norm of every bank row, chunk by chunk (no bank-sized temporary; row sums are unchanged)."""
    return torch.cat([c.pow(2).sum(1) for _, c in iter_chunks(bank, chunk_rows)])


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


def train_lists(
    bank: Bank, list_size: int = 128, seed: int = 0, train_rows: int | None = None, chunk_rows: int = CHUNK_ROWS
) -> tuple[torch.Tensor, torch.Tensor]:
    """IVF lists for a bank: k-means centroids (k = N / list_size) and every row's list id.

    With `train_rows`, k-means runs on that many random rows and all rows are then assigned chunk by chunk
    (how large or memory-mapped banks are indexed); without it, on the whole in-memory bank.
    """
    n = bank.shape[0]
    k = max(1, n // list_size)
    if train_rows is None and isinstance(bank, torch.Tensor):
        return kmeans(bank.float(), k, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    m = n if train_rows is None else min(n, max(k, train_rows))
    pick = np.sort(torch.randperm(n, generator=gen)[:m].numpy())
    sample = bank[torch.from_numpy(pick)] if isinstance(bank, torch.Tensor) else torch.from_numpy(
        np.array(bank[pick], dtype=np.float32))
    cent, _ = kmeans(sample.float(), k, seed=seed)
    assign = torch.cat([nearest_neighbors(c, cent)[1][:, 0] for _, c in iter_chunks(bank, chunk_rows)])
    return cent, assign


def is_list_ordered(assign: torch.Tensor) -> bool:
    """True when rows are already grouped by IVF list (ascending list ids): the index can search in place."""
    return bool((assign[1:] >= assign[:-1]).all()) if assign.numel() > 1 else True


class IVFIndex:
    """Inverted-file approximate nearest neighbour over a fixed bank (k-means lists, `n_probe` lists per query).

    Each query is compared with the entries of its `n_probe` nearest lists only, so a search costs about
    n_probe·list_size distances instead of the bank size; every distance it returns is exact for the entry found
    (it can only miss the true nearest neighbour, never under-estimate a distance). A bank already stored in
    list order (see `PatchCore`) is searched in place — no second copy, and a memory-mapped bank stays on disk.

    `backend`: "torch" (this module's loop; what the ONNX export reproduces), "faiss" (the same lists and probes
    searched by faiss's IVF-Flat: same entries found, distances equal to float rounding, 1.3–1.6× faster at batch 1
    on the real banks, docs/performance.md; faiss keeps a second copy of the bank), or "auto" (faiss for calls of up
    to FAISS_MAX_QUERIES queries when it is importable and the bank is in memory, else torch).
    """

    def __init__(self, bank: Bank, list_size: int = 128, n_probe: int = 8, seed: int = 0,
                 centroids: torch.Tensor | None = None, assign: torch.Tensor | None = None,
                 train_rows: int | None = None, backend: str = "torch") -> None:
        if backend not in IVF_BACKENDS:
            raise ParameterError(f"IVF backend must be one of {IVF_BACKENDS}, got {backend!r}")
        self.bank = bank.float() if isinstance(bank, torch.Tensor) else bank
        self.n_probe = n_probe
        if centroids is None or assign is None:
            centroids, assign = train_lists(self.bank, list_size, seed, train_rows)
        self.centroids, self.assign = centroids, assign
        counts = torch.bincount(assign, minlength=centroids.shape[0])
        self.starts = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
        self.order: torch.Tensor | None = None
        if is_list_ordered(assign):
            self.sorted_bank = self.bank
        elif isinstance(self.bank, torch.Tensor):
            self.order = torch.argsort(assign, stable=True)
            self.sorted_bank = self.bank[self.order].contiguous()
        else:
            raise ParameterError("a memory-mapped bank must be stored in IVF list order to be searched in place; "
                                 "write it with bank.write_list_ordered or PatchCore(bank_storage='mmap')")
        self.sorted_sq = squared_norms(self.sorted_bank)
        self._starts = self.starts.tolist()  # plain ints: the search loop reads them once per list
        self._faiss, self._backend = self._faiss_lists(backend), backend

    def _faiss_lists(self, backend: str) -> Any:
        """The same lists in a faiss IVF-Flat index (backend "faiss", or "auto" with faiss importable), else None."""
        if backend == "torch" or (backend == "auto" and not isinstance(self.sorted_bank, torch.Tensor)):
            return None
        from normalcy.detectors.image.faiss_index import FaissIndex, faiss_available

        if backend == "auto" and not faiss_available():
            return None
        list_ids = torch.repeat_interleave(torch.arange(self.centroids.shape[0]), self.starts.diff())
        return FaissIndex(self.sorted_bank, "ivf", n_probe=self.n_probe, centroids=self.centroids, assign=list_ids)

    @property
    def backend(self) -> str:
        """The backend that searches: "faiss" (under "auto": calls of up to FAISS_MAX_QUERIES queries) or "torch"."""
        return "torch" if self._faiss is None else "faiss"

    def search(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Approximate 1-NN: (Q distances, Q bank indices).

        The (query, probed list) pairs are grouped by list, so each list is one matrix product with all the
        queries that probe it; ‖q‖² is added after the minimum (it does not change which entry is nearest).
        Queries go in chunks of QUERY_PAIRS // n_probe so the gathered (query, list) pairs stay small (~10 MB).
        """
        if self._faiss is not None and (self._backend == "faiss" or queries.shape[0] <= FAISS_MAX_QUERIES):
            d, found = self._faiss.search(queries, self.n_probe)
            return d, found if self.order is None else self.order[found]
        p = min(self.n_probe, self.centroids.shape[0])
        chunk = max(1, QUERY_PAIRS // p)
        if queries.shape[0] > chunk:
            parts = [self.search(queries[s : s + chunk]) for s in range(0, queries.shape[0], chunk)]
            return torch.cat([d for d, _ in parts]), torch.cat([i for _, i in parts])
        q = queries.float()
        _, probes = nearest_neighbors(q, self.centroids, p)  # Q×p list ids
        pair_l = probes.reshape(-1)
        by_list = torch.argsort(pair_l, stable=True)
        pair_q = by_list // p  # the query of each pair, pairs in list order
        bounds = torch.searchsorted(pair_l[by_list], torch.arange(self.centroids.shape[0] + 1)).tolist()
        q_pairs = q[pair_q]
        starts = self._starts
        ds, ids = [], []
        for lst in range(self.centroids.shape[0]):
            a, b = bounds[lst], bounds[lst + 1]
            if a == b:
                continue
            s, e = starts[lst], starts[lst + 1]
            if e == s:  # an empty list (possible with a memory-mapped bank's sampled k-means): never the nearest
                ds.append(torch.full((b - a,), float("inf")))
                ids.append(torch.zeros(b - a, dtype=torch.long))
                continue
            d2 = torch.addmm(self.sorted_sq[None, s:e], q_pairs[a:b], rows(self.sorted_bank, s, e).T, alpha=-2.0)
            v, i = d2.min(dim=1)
            ds.append(v)
            ids.append(i.add_(s))
        best_d = torch.cat(ds).add_(q.pow(2).sum(1)[pair_q])
        best_i = torch.cat(ids)
        # back to query order (pair j of query i sits at i·p + j), then the best over each query's probes
        d_q = torch.empty_like(best_d)
        i_q = torch.empty_like(best_i)
        d_q[by_list], i_q[by_list] = best_d, best_i
        v, j = d_q.view(-1, p).min(dim=1)
        found = i_q.view(-1, p).gather(1, j[:, None])[:, 0]
        return v.clamp_(min=0).sqrt_(), found if self.order is None else self.order[found]
