"""PatchCore (Roth et al., 2022): a coreset memory bank of normal patch features; score = NN distance.

Defaults measured on two real sets (docs/design.md, `benchmarks/ablate_image.py`): patch features are standardized
per channel on the normal patches (`standardize`), and the NN distance is fused with a per-position Gaussian
(PaDiM's Mahalanobis distance, `positional`), each term z-scored on held-out normal images so no label and no unit
decides the mix. The image score is the largest cell of the map outside a thin border band (`border`, default 1/16
of the side: the paper's 224-of-256 centre crop), where zero-padded CNN features are atypical; maps keep every cell.
The backbone stays EfficientNet-Lite0 (`DEFAULT_BACKBONE`): Lite2 raised pixel AUROC on both real sets but lowered
image AUROC on both and on the demo's fabric (all three of its figures), so it is an option (`backbone=`,
`normalcy[lite]`), not the default; the figures are in docs/design.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from normalcy.detectors.image.bank import open_bank, streamed_nearest, write_bank
from normalcy.detectors.image.common import ImageDetector, masked_max
from normalcy.detectors.image.padim import fit_position_gaussian, position_distances, random_channels
from normalcy.detectors.image.search import (
    Bank,
    IVFIndex,
    greedy_coreset,
    is_list_ordered,
    nearest_neighbors,
    squared_norms,
    train_lists,
)
from normalcy.errors import ModelFileError, ParameterError
from normalcy.features.standardize import ChannelStats

DEFAULT_BACKBONE = "efficientnet_lite0"  # a core dependency (pyproject.toml), not an extra
EXACT_SEARCH_MAX = 2048  # banks up to this size are searched exactly with search="auto" (above it IVF costs less:
# about n_probe·128 candidates per query; measured equal at 2,048 rows, IVF 5.5× faster at 13.5k, docs/performance.md)
SEARCH_MODES = ("auto", "exact", "ivf", "faiss-ivf", "faiss-hnsw")
BANK_STORAGE = ("inline", "mmap")


def split_holdout(items: list, fraction: float, seed: int) -> tuple[list, list]:
    """A seeded split of the fit images into (fit, held-out); below 4 images both parts are all of them."""
    n = len(items)
    if n < 4:
        return list(items), list(items)
    n_hold = min(n - 2, max(1, round(fraction * n)))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed) + 1)).tolist()
    hold = set(order[:n_hold])
    return [it for i, it in enumerate(items) if i not in hold], [it for i, it in enumerate(items) if i in hold]


class PatchCore(ImageDetector):
    """Nearest-neighbour distance of each test patch to a greedy-coreset memory bank of normal patches.

    With `positional=True` a `holdout` fraction of the fit images (seeded) builds neither the bank nor the
    Gaussians: it only measures the two distances' mean and spread on normal images for the fusion.
    """

    name = "patchcore"

    def __init__(
        self,
        backbone: str = DEFAULT_BACKBONE,
        weights: str | Path | None = None,
        image_size: int = 256,
        resize_mode: str = "aspect",
        strides: Sequence[int] = (8, 16),
        aggregate: int = 3,
        project_dim: int | None = None,
        standardize: bool = True,
        positional: bool = True,
        position_features: int = 100,
        holdout: float = 0.2,
        coreset_ratio: float = 0.1,
        coreset_dim: int = 64,
        reweight: bool = False,
        search: str = "auto",
        n_probe: int = 4,  # IVF lists per query: 8 → 4 halves search for ≤ 0.001 AUROC (docs/performance.md)
        bank_storage: str = "inline",
        border: float = 0.0625,
        sigma: float = 4.0,
        batch_size: int = 16,
        memory_budget_mb: int = 256,
        alpha: float = 0.05,
        pixel_fpr: float = 0.001,
        calibration_fraction: float = 0.2,
        seed: int = 0,
        progress: bool = True,
    ) -> None:
        self._store_params(locals())

    def _fit(self, items: list) -> None:
        if not 0.0 < self.coreset_ratio <= 1.0:
            raise ParameterError(f"coreset_ratio must be in (0, 1], got {self.coreset_ratio}")
        self._position = self._fusion = None
        if not self.positional:
            patches = self.collect_patches(items)
            self._fit_bank(patches, ChannelStats.fit(patches) if self.standardize else None)
            return
        if self.reweight:
            raise ParameterError("reweight=True works on the plain nearest-neighbour score; use positional=False")
        if not 0.0 < self.holdout < 1.0:
            raise ParameterError(f"holdout must be a fraction in (0, 1), got {self.holdout}")
        fit_items, held = split_holdout(items, self.holdout, self.seed)
        batches = [(f, v) for f, _, v in self.iter_features(fit_items, "fit features")]
        patches = torch.cat([f.permute(0, 2, 3, 1)[v] for f, v in batches])
        self._stats = ChannelStats.fit(patches) if self.standardize else None
        if len(fit_items) >= 2:  # the Gaussians live in the same (standardized) space as the bank
            std = (lambda f: f) if self._stats is None else (lambda f: self._stats.apply(f, dim=1))
            chans = random_channels(patches.shape[1], self.position_features, self.seed)
            self._position = (chans, *fit_position_gaussian((std(f) for f, _ in batches), chans, 0.01))
        del batches
        self._fit_bank(patches, self._stats)
        if self._position is not None:
            self._fusion = self._fusion_norms(held)

    def _fit_bank(self, patches: torch.Tensor, stats: ChannelStats | None) -> None:
        """The greedy-coreset memory bank of these normal patches (standardized in place with `stats`)."""
        self._stats = stats
        if stats is not None:  # in place: the patch matrix can be hundreds of MB
            patches.sub_(stats.mean).div_(stats.scale)
        keep = greedy_coreset(patches, self.coreset_ratio, self.coreset_dim, seed=self.seed)
        self._set_bank(patches[keep].contiguous())

    def _fusion_norms(self, held: list) -> torch.Tensor:
        """Mean and spread of both distances over the held-out normal images' cells: [μ_nn, σ_nn, μ_pos, σ_pos].

        Each term is z-scored with these before the two are added, so neither term's units decide the fused map
        and no label is needed (the held-out images took no part in the bank or the Gaussians).
        """
        nn, pos = [], []
        for feats, _, valid in self.iter_features(held, "held-out normals"):
            dist, _, searched = self._nn_maps(feats)
            nn.append(dist[valid])
            pos.append(position_distances(searched, *self._position)[valid])
        a, b = torch.cat(nn).double(), torch.cat(pos).double()
        floor = 1e-12
        return torch.tensor([a.mean(), a.std().clamp(min=floor), b.mean(), b.std().clamp(min=floor)],
                            dtype=torch.float64)

    def _search_mode(self, n_bank: int) -> str:
        """The backend actually used: `search`, with "auto" = exact up to EXACT_SEARCH_MAX rows, else own IVF."""
        if self.search not in SEARCH_MODES:
            raise ParameterError(f"search must be one of {', '.join(SEARCH_MODES)}; got {self.search!r}")
        if self.bank_storage not in BANK_STORAGE:
            raise ParameterError(f"bank_storage must be 'inline' or 'mmap', got {self.bank_storage!r}")
        if self.search == "auto":
            return "ivf" if n_bank > EXACT_SEARCH_MAX else "exact"
        return self.search

    def _set_bank(self, bank: Bank, centroids: torch.Tensor | None = None,
                  assign: torch.Tensor | None = None) -> None:
        """Install the memory bank (a tensor, or a memory-mapped array) and the index its search mode needs.

        For IVF modes the bank is kept in list order, so the index searches it in place (no second copy).
        """
        mode = self._search_mode(bank.shape[0])
        self._lists = None
        if mode in ("ivf", "faiss-ivf"):
            if centroids is None or assign is None:
                centroids, assign = train_lists(bank, seed=self.seed)
            if not is_list_ordered(assign):
                if not isinstance(bank, torch.Tensor):
                    raise ModelFileError("a memory-mapped bank without list order cannot be indexed in place")
                order = torch.argsort(assign, stable=True)
                bank, assign = bank[order].contiguous(), assign[order]
            self._lists = (centroids, assign)
        self.memory_bank_ = bank
        self._bank_sq = squared_norms(bank)
        self._index: Any = None
        if mode == "ivf":
            self._index = IVFIndex(bank, n_probe=self.n_probe, centroids=centroids, assign=assign)
        elif mode.startswith("faiss-"):
            from normalcy.detectors.image.faiss_index import FaissIndex

            self._index = FaissIndex(bank, mode.removeprefix("faiss-"), n_probe=self.n_probe, centroids=centroids)

    def _nearest(self, q: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact k-NN in the bank (streamed in chunks when the bank is memory-mapped)."""
        if isinstance(self.memory_bank_, torch.Tensor):
            return nearest_neighbors(q, self.memory_bank_, k, self.memory_budget_mb, self._bank_sq)
        return streamed_nearest(q, self.memory_bank_, k, self.memory_budget_mb, self._bank_sq)

    def _bank_rows(self, idx: torch.Tensor) -> torch.Tensor:
        """Bank rows at `idx` (any shape) as a tensor of shape idx.shape + (C,)."""
        if isinstance(self.memory_bank_, torch.Tensor):
            return self.memory_bank_[idx]
        flat = np.array(self.memory_bank_[idx.reshape(-1).numpy()], dtype=np.float32)
        return torch.from_numpy(flat).view(*idx.shape, -1)

    def _nn_maps(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """B×C×h×w raw features → (B×h×w nearest-bank distances, bank indices, the features searched)."""
        if getattr(self, "_stats", None) is not None:
            feats = self._stats.apply(feats, dim=1)
        b, c, h, w = feats.shape
        q = feats.permute(0, 2, 3, 1).reshape(-1, c)
        if self._index is not None:
            dist, idx = self._index.search(q)
            dist, idx = dist[:, None], idx[:, None]
        else:
            dist, idx = self._nearest(q)
        return dist[:, 0].view(b, h, w), idx[:, 0].view(b, h, w), feats

    def _score_features(self, feats: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps, idx, searched = self._nn_maps(feats)
        if getattr(self, "_fusion", None) is not None:
            mu_nn, sd_nn, mu_pos, sd_pos = (float(v) for v in self._fusion)
            pos = position_distances(searched, *self._position)
            maps = (maps - mu_nn) / sd_nn + (pos - mu_pos) / sd_pos
        cells = self.score_cells(valid)
        scores = masked_max(maps, cells)
        if self.reweight:
            scores = self._reweighted(searched, maps, idx, cells, scores)
        return scores, maps

    def _reweighted(self, feats, maps, nn_idx, valid, scores, neighbours: int = 3) -> torch.Tensor:
        """PatchCore eq. 7: damp the max-patch score when its nearest bank entry sits in a dense region."""
        b, c = feats.shape[:2]
        flat = maps.masked_fill(~valid, float("-inf")).flatten(1).argmax(1)
        q_star = feats.flatten(2)[torch.arange(b), :, flat]  # B×C
        m_star = self._bank_rows(nn_idx.flatten(1)[torch.arange(b), flat])  # B×C
        _, nb = self._nearest(m_star, neighbours)
        d_nb = torch.cdist(q_star[:, None], self._bank_rows(nb))[:, 0]  # B×k (first = m* itself)
        weight = 1.0 - torch.softmax(d_nb, dim=1)[:, 0]  # eq. 7 (softmax = its stable form)
        return weight * scores

    # ---- persistence --------------------------------------------------------------------------------------
    def _state_arrays(self) -> dict[str, np.ndarray]:
        # inline unless this bank went to a sidecar file (fold models of a memory-mapped model are stored inline)
        out = {} if getattr(self, "_bank_file", None) else {"memory_bank": np.asarray(self.memory_bank_)}
        if getattr(self, "_stats", None) is not None:
            out.update(self._stats.arrays())
        if getattr(self, "_fusion", None) is not None:
            chans, mean, precision = self._position
            out.update(position_channels=chans.numpy(), position_mean=mean.numpy(),
                       position_precision=precision.numpy(), fusion_norms=self._fusion.numpy())
        if self._lists is not None:
            out["ivf_centroids"] = self._lists[0].numpy()
            out["ivf_assign"] = self._lists[1].numpy()
        return out

    def _save_sidecar(self, model_path: Path) -> None:
        """With bank_storage="mmap", write the bank beside the model as `<model>.bank.npy` (called by save)."""
        if self.bank_storage != "mmap":
            self._bank_file = None
            return
        name = Path(model_path).name + ".bank.npy"
        sha = write_bank(Path(model_path).parent / name, self.memory_bank_)
        self._bank_file = {"bank_file": name, "bank_shape": list(self.memory_bank_.shape), "bank_sha256": sha}

    def _state_meta(self) -> dict[str, Any]:
        return {**dict(getattr(self, "_bank_file", None) or {}), **self._canvas_meta()}

    def _load_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self._load_canvas(meta)
        self._stats = ChannelStats.from_arrays(arrays)
        self._position = self._fusion = None
        if "fusion_norms" in arrays:
            to = lambda k, t: torch.from_numpy(np.ascontiguousarray(arrays[k], dtype=t))  # noqa: E731
            self._position = (to("position_channels", np.int64), to("position_mean", np.float32),
                              to("position_precision", np.float32))
            self._fusion = to("fusion_norms", np.float64)
        if "bank_file" in meta:  # memory-mapped sidecar: opened read-only, never read whole
            folder = Path(getattr(self, "_model_path", ".")).parent
            bank: Bank = open_bank(folder / meta["bank_file"], meta["bank_shape"], meta["bank_sha256"])
            self._bank_file = {k: meta[k] for k in ("bank_file", "bank_shape", "bank_sha256")}
        else:
            bank = torch.from_numpy(np.ascontiguousarray(arrays["memory_bank"], dtype=np.float32))
        cent = arrays.get("ivf_centroids")
        assign = arrays.get("ivf_assign")
        self._set_bank(bank, None if cent is None else torch.from_numpy(np.ascontiguousarray(cent)),
                       None if assign is None else torch.from_numpy(np.ascontiguousarray(assign)))
