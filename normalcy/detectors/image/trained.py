"""What the trained image detectors share: cached backbone features, channel statistics, the smoothed-max image
score, saving network weights, and `FeatureModelDetector`, the base that trains a small network on patch features
with the one training loop (normalcy.detectors.training)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from normalcy.detectors.image.common import ImageDetector, border_cells, masked_max
from normalcy.detectors.training import load_module, module_arrays, seeded, split_items, train
from normalcy.features.extractor import PaddedExtractor, pad_cells
from normalcy.features.preprocess import gaussian_blur

SCORE_SIGMA = 2.0  # cells: patch maps are blurred this much before their maximum becomes the image score


def cache_features(det: Any, items: list, desc: str = "fit features") -> tuple[torch.Tensor, torch.Tensor]:
    """Backbone patch features of `items`, extracted once: (N×C×h×w float32, N×h×w valid cells)."""
    feats, valid = [], []
    for f, _, v in det.iter_features(items, desc):
        feats.append(f)
        valid.append(v)
    return torch.cat(feats), torch.cat(valid)  # cat outside inference mode: normal tensors, usable in autograd


def channel_stats(feats: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std (floored) of the valid cells of N×C×h×w features."""
    rows = feats.permute(0, 2, 3, 1)[valid]
    return rows.mean(0), rows.std(0).clamp_min(1e-6)


def smoothed_max(maps: torch.Tensor, valid: torch.Tensor, sigma: float = SCORE_SIGMA) -> torch.Tensor:
    """Image score: the maximum of the patch-score map after a Gaussian blur of `sigma` cells.

    A learned model's patch scores are noisy; one hot cell on a normal image should not decide its score. On a
    magnetic_tile subsample the blur raised image AUROC for every map tried (PatchCore's too), see docs/trained.md.
    """
    sigma = min(sigma, (min(maps.shape[-2:]) - 1) / 4)  # reflect padding needs the kernel radius < map size
    return masked_max(gaussian_blur(maps, sigma) if sigma >= 0.5 else maps, valid)


def restore_unpadded(det: Any, meta: dict[str, Any]) -> None:
    """A model file written before `pad`/`border` existed was fitted on unpadded features: score it that way."""
    if not meta.get("padded", False):
        det.pad, det.border = 0.0, 0.0


class FeatureModelDetector(ImageDetector):
    """Base for detectors that train a small network on standardized backbone patch features, cached once.

    Subclasses build the network (`_build`), give its training loss (`_loss`) and its B×h×w patch-score map
    (`_patch_scores`, higher = more anomalous); fitting, scoring and saving the weights are shared here.
    """

    min_fit_items = 4
    grad_clip: float | None = None
    pad: float = 0.0  # subclasses take `pad` and `border` as parameters
    border: float = 0.0

    @property
    def extractor(self) -> Any:
        """The backbone's patch-feature extractor, run on a canvas reflect-padded by `pad` (see PaddedExtractor)."""
        base = ImageDetector.extractor.fget(self)  # type: ignore[attr-defined]
        stride = min(self.strides)
        return PaddedExtractor(base, pad_cells(self.pad, int(self.image_size), stride), stride)

    def _build(self, channels: int) -> nn.Module:
        """A fresh network for `channels`-channel features (called under the detector's seed)."""
        raise NotImplementedError

    def _loss(self, net: nn.Module, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Training loss of a batch of standardized B×C×h×w features (only `valid` cells count)."""
        raise NotImplementedError

    def _patch_scores(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """B×h×w patch scores (higher = more anomalous) of standardized features."""
        raise NotImplementedError

    def _fit(self, items: list) -> None:
        border_cells(self.border, 1)  # a bad `border` fails before any work
        feats, valid = cache_features(self, items)
        mean, std = channel_stats(feats, valid)
        x = (feats - mean[:, None, None]) / std[:, None, None]
        del feats  # the cache can be large (457 images at 256 px: ~285 MB); keep one copy
        tr, va = split_items(len(items), float(self.val_fraction), int(self.seed))
        with seeded(int(self.seed)):
            net = self._build(x.shape[1])
        result = train(
            net, lambda xb, vb: self._loss(net, xb, vb), (x[tr], valid[tr]),
            (x[va], valid[va]) if len(va) else None, epochs=int(self.epochs), batch_size=int(self.train_batch),
            lr=float(self.lr), weight_decay=1e-5, max_seconds=self.max_seconds, patience=self.patience,
            grad_clip=self.grad_clip, seed=int(self.seed), progress=bool(self.progress), desc=f"{self.name} train",
        )
        self.mean_, self.std_, self.net_, self.train_result_ = mean, std, net, result.to_meta()

    def _score_features(self, feats: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode():
            x = (feats - self.mean_[:, None, None]) / self.std_[:, None, None]
            maps = self._patch_scores(self.net_, x).float()
        return smoothed_max(maps, self.score_cells(valid)), maps

    def _state_arrays(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean_.numpy(), "std": self.std_.numpy(), **module_arrays("net", self.net_)}

    def _state_meta(self) -> dict[str, Any]:
        return {"train": self.train_result_, "padded": True}

    def _load_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        restore_unpadded(self, meta)
        self.mean_ = torch.from_numpy(np.ascontiguousarray(arrays["mean"], dtype=np.float32))
        self.std_ = torch.from_numpy(np.ascontiguousarray(arrays["std"], dtype=np.float32))
        with seeded(int(self.seed)):
            self.net_ = load_module("net", self._build(self.mean_.numel()), arrays)
        self.train_result_ = dict(meta.get("train", {}))
