"""Memory banks that live in a .npy file: atomic writing, memory-mapped opening, search streamed in chunks.

A bank opened with `np.load(mmap_mode="r")` is never copied whole into process memory: searches read it in
row chunks of `chunk_rows`, so a 10^6 × d bank costs one chunk of anonymous memory plus page cache the kernel
can evict (and share between processes that map the same file).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from normalcy.data.files import atomic_path
from normalcy.detectors.image.search import CHUNK_ROWS, DEFAULT_BUDGET_MB, Bank, iter_chunks, nearest_neighbors
from normalcy.errors import ModelFileError


def streamed_nearest(
    queries: torch.Tensor, bank: Bank, k: int = 1, budget_mb: int = DEFAULT_BUDGET_MB,
    bank_sq: torch.Tensor | None = None, chunk_rows: int = CHUNK_ROWS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact k-NN over a bank read in row chunks: the same answer as `nearest_neighbors`, bounded memory."""
    if isinstance(bank, torch.Tensor) and bank.shape[0] <= chunk_rows:
        return nearest_neighbors(queries, bank, k, budget_mb, bank_sq)
    queries = queries.float()
    k = min(k, bank.shape[0])
    best_d = torch.full((queries.shape[0], k), float("inf"))
    best_i = torch.zeros((queries.shape[0], k), dtype=torch.long)
    for start, chunk in iter_chunks(bank, chunk_rows):
        sq = None if bank_sq is None else bank_sq[start : start + chunk.shape[0]]
        d, i = nearest_neighbors(queries, chunk, k, budget_mb, sq)
        i += start
        if k == 1:
            better = d < best_d  # strict: on ties the earlier row wins, as in one pass over the whole bank
            best_d = torch.where(better, d, best_d)
            best_i = torch.where(better, i, best_i)
        else:
            d_all, i_all = torch.cat([best_d, d], 1), torch.cat([best_i, i], 1)
            best_d, pos = d_all.topk(k, dim=1, largest=False)
            best_i = i_all.gather(1, pos)
    return best_d, best_i


def file_sha256(path: Path, block: int = 8 * 2**20) -> str:
    """SHA-256 of a file read in blocks (plain reads: the page cache is not charged to this process)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def write_bank(path: Path, bank: Bank, chunk_rows: int = CHUNK_ROWS) -> str:
    """Write a bank as a float32 .npy file atomically (temp file + rename), chunk by chunk; returns its sha256."""
    path = Path(path)
    with atomic_path(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=tuple(bank.shape))
        for start, chunk in iter_chunks(bank, chunk_rows):
            out[start : start + chunk.shape[0]] = chunk.numpy()
        out.flush()
        del out
    return file_sha256(path)


def check_sidecar_name(name: object, model_path: Path) -> str:
    """A sidecar bank named in a model file must be a plain file name in the model's own folder (no path)."""
    ok = (isinstance(name, str) and 0 < len(name) <= 255 and name not in (".", "..") and "\x00" not in name
          and "/" not in name and "\\" not in name and Path(name).name == name and name.endswith(".npy"))
    if not ok:
        raise ModelFileError(f"{model_path}: its memory bank must be a plain .npy file name beside the model, got "
                             f"{str(name)[:80]!r}; refusing to open a path outside the model's folder")
    return name


def open_bank(path: Path, shape: list[int] | None = None, sha256: str | None = None) -> np.ndarray:
    """Memory-map a bank .npy file read-only, checking shape, dtype and (if given) its recorded sha256."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"memory bank file not found: {path} (keep it beside its model file)")
    if sha256 is not None and file_sha256(path) != sha256:
        raise ModelFileError(f"{path}: memory bank contents do not match the model's checksum (replaced or damaged)")
    try:
        bank = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise ModelFileError(f"{path} is not a readable .npy memory bank: {exc}") from None
    if bank.dtype != np.float32 or bank.ndim != 2 or (shape is not None and list(bank.shape) != list(shape)):
        raise ModelFileError(f"{path}: expected a float32 bank of shape {shape}, found {bank.dtype} {bank.shape}")
    return bank


def write_list_ordered(path: Path, bank: Bank, assign: torch.Tensor,
                       chunk_rows: int = CHUNK_ROWS) -> tuple[torch.Tensor, torch.Tensor]:
    """Copy `bank` to a .npy file grouped by IVF list, chunk by chunk, so `IVFIndex` searches the file in place.

    Returns (the sorted list ids, the original row of each new row).
    """
    order = torch.argsort(assign, stable=True)
    path = Path(path)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=tuple(bank.shape))
    for start in range(0, order.shape[0], chunk_rows):
        idx = order[start : start + chunk_rows].numpy()
        src = bank[torch.from_numpy(idx)] if isinstance(bank, torch.Tensor) else bank[np.sort(idx)]
        if not isinstance(bank, torch.Tensor):  # read the file in ascending row order, then put rows in place
            src = src[np.argsort(np.argsort(idx))]
        out[start : start + idx.shape[0]] = np.asarray(src, dtype=np.float32)
    out.flush()
    del out
    return assign[order], order
