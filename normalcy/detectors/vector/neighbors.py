"""Exact k-nearest-neighbour distances with a bounded memory footprint.

Low-dimensional data goes through scipy's k-d tree (exact, multi-threaded, far less memory traffic than a
brute-force distance matrix). Otherwise faiss's exact flat index is used when installed, else float32 matrix
products (numpy's BLAS) and torch's top-k: -2 q.r + |r|^2 is formed block by block (each block within
`memory_mb`), the k best candidates per query are kept, and their distances are recomputed exactly in float64.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import torch

from normalcy.detectors.vector.checks import check_choice

BACKENDS = ("auto", "kdtree", "torch", "faiss")
KDTREE_MAX_DIM = 16  # above this a k-d tree prunes too little; brute force wins
SMALL_CELLS = 20_000_000  # query x reference pairs up to which the BLAS product + top-k beats faiss (measured)
TINY_CELLS = 50_000  # ... and up to which it beats building a k-d tree even in low dimensions
PARALLEL_MIN_CELLS = 50_000_000


def have_faiss() -> bool:
    """True when the optional faiss package can be imported."""
    return importlib.util.find_spec("faiss") is not None


def pick_backend(backend: str, n_features: int) -> str:
    """Resolve "auto" to a concrete backend for data of this width."""
    check_choice("backend", backend, BACKENDS)
    if backend == "faiss" and not have_faiss():
        raise ImportError("backend='faiss' needs the faiss package (pip install faiss-cpu)")
    if backend != "auto":
        return backend
    if n_features <= KDTREE_MAX_DIM:
        return "kdtree"
    return "faiss" if have_faiss() else "torch"


def _block_sizes(n_query: int, n_ref: int, memory_mb: float, cell_bytes: int = 8) -> tuple[int, int]:
    """Rows of queries and of references per block so one distance block fits the budget."""
    budget = max(int(memory_mb * 2**20) // cell_bytes, 4096)
    ref_block = min(n_ref, max(budget // 64, 1))
    query_block = max(1, min(n_query, budget // ref_block))
    return query_block, ref_block


def _exact(q: np.ndarray, reference: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Sorted float64 distances from each query row to its candidate reference rows."""
    diff = reference[idx] - q[:, None, :]
    return np.sort(np.sqrt(np.einsum("ijk,ijk->ij", diff, diff)), axis=1)


def _torch_candidates(q: np.ndarray, ref: np.ndarray, ref_sq: np.ndarray, k: int, ref_block: int) -> np.ndarray:
    """Indices of each query's k nearest reference rows (float32, unordered).

    The product is numpy's float32 BLAS (OpenBLAS: 2-5x faster than torch's single-threaded float32 matmul on
    these shapes, measured), the selection torch's top-k (far faster than numpy's argpartition). |q|^2 is the
    same for every reference of a query, so it is left out of the ranking.
    """
    q = np.ascontiguousarray(q, dtype=np.float32)
    best_d = best_i = None
    for rs in range(0, len(ref), ref_block):
        d2 = q @ ref[rs : rs + ref_block].T
        d2 *= -2.0
        d2 += ref_sq[rs : rs + ref_block]
        vals, idx = torch.topk(torch.from_numpy(d2), min(k, d2.shape[1]), dim=1, largest=False, sorted=False)
        idx += rs
        if best_d is not None:
            vals, idx = torch.cat([best_d, vals], 1), torch.cat([best_i, idx], 1)
            vals, pos = torch.topk(vals, k, dim=1, largest=False, sorted=False)
            idx = torch.gather(idx, 1, pos)
        best_d, best_i = vals, idx
    return best_i.numpy()


def _torch_knn(queries: np.ndarray, reference: np.ndarray, k: int, memory_mb: float) -> np.ndarray:
    shift = reference.mean(axis=0)  # centring keeps |x|^2 small, so float32 cancellation stays harmless
    ref = np.ascontiguousarray(reference - shift, dtype=np.float32)
    ref_sq = np.einsum("ij,ij->i", ref, ref)
    q_block, r_block = _block_sizes(len(queries), len(reference), memory_mb, cell_bytes=4)
    out = np.empty((len(queries), k))
    with torch.inference_mode():
        for qs in range(0, len(queries), q_block):
            q = queries[qs : qs + q_block]
            idx = _torch_candidates(q - shift, ref, ref_sq, k, r_block)
            out[qs : qs + q_block] = _exact(q, reference, idx)
    return out


def _faiss_knn(queries: np.ndarray, reference: np.ndarray, k: int, memory_mb: float) -> np.ndarray:
    import faiss

    shift = reference.mean(axis=0)
    index = faiss.IndexFlatL2(reference.shape[1])
    index.add(np.ascontiguousarray(reference - shift, dtype=np.float32))
    q_block, _ = _block_sizes(len(queries), len(reference), memory_mb, cell_bytes=4)
    out = np.empty((len(queries), k))
    for qs in range(0, len(queries), q_block):
        q = queries[qs : qs + q_block]
        _, idx = index.search(np.ascontiguousarray(q - shift, dtype=np.float32), k)
        out[qs : qs + q_block] = _exact(q, reference, idx)
    return out


def _kdtree_knn(queries: np.ndarray, reference: np.ndarray, k: int, memory_mb: float) -> np.ndarray:
    from scipy.spatial import cKDTree

    tree = cKDTree(reference, balanced_tree=False, compact_nodes=False)
    q_block = max(1024, int(memory_mb * 2**20) // (16 * k))
    out = np.empty((len(queries), k))
    # threads cost ~0.5 ms each to start: worth it only for large query sets
    workers = min(os.cpu_count() or 1, 4) if len(queries) * len(reference) > PARALLEL_MIN_CELLS else 1
    for qs in range(0, len(queries), q_block):
        d, _ = tree.query(queries[qs : qs + q_block], k=k, workers=workers)
        out[qs : qs + q_block] = np.reshape(d, (-1, k))
    return out


_RUNNERS = {"kdtree": _kdtree_knn, "torch": _torch_knn, "faiss": _faiss_knn}


def knn_distances(
    queries: np.ndarray, reference: np.ndarray, k: int, memory_mb: float = 256.0, backend: str = "auto"
) -> np.ndarray:
    """Euclidean distances (ascending, n_queries x k) from each query to its k nearest reference rows."""
    if not 1 <= k <= len(reference):
        raise ValueError(f"k={k} must be between 1 and the {len(reference)} reference rows")
    queries, reference = np.asarray(queries, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    cells = len(queries) * len(reference)
    low_dim = reference.shape[1] <= KDTREE_MAX_DIM
    if backend == "auto" and (cells <= TINY_CELLS or (not low_dim and cells <= SMALL_CELLS)):
        return _torch_knn(queries, reference, k, memory_mb)  # no index to build: one blocked matmul + top-k
    run = _RUNNERS[pick_backend(backend, reference.shape[1])]
    return run(np.asarray(queries, dtype=np.float64), np.asarray(reference, dtype=np.float64), k, memory_mb)
