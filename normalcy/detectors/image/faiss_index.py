"""Optional faiss backends for large memory banks (IVF-Flat, HNSW); faiss is never required.

`pip install "normalcy[faiss]"` (faiss-cpu). Asking for a faiss backend without faiss raises
`MissingDependencyError` naming the extra; `search="auto"` never needs it, but uses it when importable to search
the torch IVF index's own lists (`IVFIndex(backend="auto")`: the same entries, faster; docs/performance.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from normalcy.detectors.image.search import CHUNK_ROWS, Bank, iter_chunks, nearest_neighbors, rows
from normalcy.errors import MissingDependencyError, ParameterError

KINDS = ("ivf", "hnsw")


def import_faiss() -> Any:
    """The faiss module, or a clear error saying how to install it."""
    try:
        import faiss
    except ImportError as exc:
        raise MissingDependencyError(
            f"this search backend needs faiss, which is not installed ({exc}); install it with "
            "pip install 'normalcy[faiss]' (or faiss-cpu), or use search='ivf' / 'exact'"
        ) from None
    return faiss


def faiss_available() -> bool:
    """True when faiss can be imported here."""
    try:
        import_faiss()
    except MissingDependencyError:
        return False
    return True


class FaissIndex:
    """Approximate 1-NN over a bank with faiss: IVF-Flat on given k-means lists, or HNSW (flat storage).

    Vectors are added chunk by chunk, so a memory-mapped bank is never copied whole; faiss keeps its own copy of
    the vectors (one bank's worth of memory). Returned distances are exact for the entries found. With `assign`
    (each row's list id, e.g. `IVFIndex`'s), IVF rows go to those lists instead of faiss's own nearest-centroid
    choice, so both search the same lists with the same probes and find the same entries. HNSW defaults
    (M=16, efConstruction=40) keep the single-thread build near 4 s per 20k rows × 152 dims on a busy 2-core
    machine (M=32 took twice as long).
    """

    def __init__(self, bank: Bank, kind: str = "ivf", n_probe: int = 8, centroids: torch.Tensor | None = None,
                 hnsw_m: int = 16, ef_search: int = 64, ef_construction: int = 40,
                 assign: torch.Tensor | None = None) -> None:
        faiss = import_faiss()
        if kind not in KINDS:
            raise ParameterError(f"faiss index kind must be one of {KINDS}, got {kind!r}")
        faiss.omp_set_num_threads(torch.get_num_threads())  # respect the caller's thread budget
        d = int(bank.shape[1])
        self.kind = kind
        if kind == "ivf":
            if centroids is None:
                raise ParameterError("a faiss IVF index needs k-means centroids (see search.train_lists)")
            self._quantizer = faiss.IndexFlatL2(d)  # kept referenced: the IVF index does not own it
            self._quantizer.add(np.ascontiguousarray(centroids.numpy(), dtype=np.float32))
            self.index = faiss.IndexIVFFlat(self._quantizer, d, int(centroids.shape[0]))
            self.index.nprobe = int(min(n_probe, centroids.shape[0]))
        else:
            self.index = faiss.IndexHNSWFlat(d, int(hnsw_m))
            self.index.hnsw.efConstruction = int(ef_construction)
            self.index.hnsw.efSearch = int(ef_search)
        if assign is not None and kind != "ivf":
            raise ParameterError("list ids (assign) only apply to a faiss IVF index")
        if assign is not None and assign.shape[0] != bank.shape[0]:
            raise ParameterError(f"assign has {assign.shape[0]} list ids for a bank of {bank.shape[0]} rows")
        for start, chunk in iter_chunks(bank, CHUNK_ROWS):
            x = np.ascontiguousarray(chunk.numpy(), dtype=np.float32)
            if assign is None:
                self.index.add(x)
            else:  # rows keep their ids (0..N-1 in bank order) and go to the given lists
                lists = np.ascontiguousarray(assign[start : start + x.shape[0]].numpy(), dtype=np.int64)
                self.index.add_core(x.shape[0], faiss.swig_ptr(x), None, faiss.swig_ptr(lists))
        self._bank = bank

    def search(self, queries: torch.Tensor, n_probe: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Approximate 1-NN: (Q distances, Q bank indices); `n_probe` overrides an IVF index's lists per query."""
        faiss = import_faiss()
        faiss.omp_set_num_threads(torch.get_num_threads())
        params = None
        if n_probe is not None and self.kind == "ivf":  # per call: the index itself is never changed (threads)
            params = faiss.SearchParametersIVF(nprobe=int(min(n_probe, self.index.nlist)))
        d2, idx = self.index.search(np.ascontiguousarray(queries.float().numpy()), 1, params=params)
        dist = torch.from_numpy(d2[:, 0].astype(np.float32)).clamp_(min=0).sqrt_()
        found = torch.from_numpy(idx[:, 0].astype(np.int64))
        missing = torch.nonzero(found < 0)[:, 0]  # only if every probed list was empty: answer exactly
        if missing.numel():
            d_ex, i_ex = nearest_neighbors(queries[missing].float(), rows(self._bank, 0, self._bank.shape[0]))
            dist[missing], found[missing] = d_ex[:, 0], i_ex[:, 0]
        return dist, found
