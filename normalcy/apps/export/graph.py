"""Fitted detectors as plain `nn.Module`s: image batch + valid cells → image scores (+ patch-score maps).

Each module runs the detector's own feature extractor and the same scoring arithmetic as its `_score_features`,
with the fitted state as constant buffers, so tracing it yields one self-contained graph. The image score uses
`masked_max`, the very function the torch detectors call; map upsampling and smoothing stay outside the graph
(`restore_maps`), shared by both paths.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normalcy.detectors.image.common import masked_max
from normalcy.errors import ParameterError

EXPORTABLE = ("patchcore", "padim", "gaussian")
MAX_BYTES = 1900 * 2**20  # protobuf caps one ONNX file at 2 GiB; keep room for the graph itself
BANK_CHUNK = 4096  # bank rows per distance block: bounds the graph's largest intermediate (batch×patches×chunk)


def _as_float_tensor(array) -> Tensor:
    """A float32 tensor copy of a tensor or (possibly memory-mapped) array."""
    if isinstance(array, Tensor):
        return array.detach().float().clone()
    return torch.from_numpy(np.array(array, dtype=np.float32))


class PatchCoreGraph(nn.Module):
    """Exact nearest-neighbour distance of every patch to the memory bank, ‖a‖² − 2ab + ‖b‖², min, sqrt."""

    def __init__(self, detector) -> None:
        super().__init__()
        self.extractor = detector.extractor
        self.net = detector.extractor.net  # registered so the backbone weights become named initializers
        rows, dim = detector.memory_bank_.shape
        if rows * dim * 4 > MAX_BYTES:  # refuse before reading a (possibly memory-mapped) bank into memory
            raise ParameterError(f"patchcore's memory bank ({rows}×{dim}) is larger than one ONNX file can hold "
                                 "(2 GiB); refit with a smaller coreset_ratio to export it")
        bank = _as_float_tensor(detector.memory_bank_)
        self.n_chunks = 0
        for start in range(0, bank.shape[0], BANK_CHUNK):
            chunk = bank[start : start + BANK_CHUNK].contiguous()
            self.register_buffer(f"bank_{self.n_chunks}", chunk)
            self.register_buffer(f"bank_sq_{self.n_chunks}", chunk.pow(2).sum(1))
            self.n_chunks += 1

    def forward(self, image: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        feats = self.extractor(image)
        h, w = feats.shape[-2:]
        q = feats.flatten(2).transpose(1, 2)  # B×P×C
        q_sq = q.pow(2).sum(-1, keepdim=True)
        best = None
        for i in range(self.n_chunks):
            bank, bank_sq = getattr(self, f"bank_{i}"), getattr(self, f"bank_sq_{i}")
            d2 = torch.matmul(q, bank.T).mul(-2.0).add(bank_sq).add(q_sq).amin(-1)
            best = d2 if best is None else torch.minimum(best, d2)
        maps = best.clamp(min=0).sqrt().reshape(-1, h, w)
        return masked_max(maps, valid), maps


class PaDiMGraph(nn.Module):
    """Per-position Mahalanobis distance of the selected channels (one batched matmul per position)."""

    def __init__(self, detector) -> None:
        super().__init__()
        self.extractor = detector.extractor
        self.net = detector.extractor.net
        self.register_buffer("channels", detector.channels_.clone())
        self.register_buffer("mean", detector.mean_.float().clone())
        self.register_buffer("precision", detector.precision_.float().clone())

    def forward(self, image: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        feats = self.extractor(image)
        h, w = feats.shape[-2:]
        f = feats[:, self.channels].flatten(2).transpose(1, 2)  # B×P×C
        dp = (f - self.mean[None]).transpose(0, 1)  # P×B×C
        d2 = (torch.matmul(dp, self.precision) * dp).sum(-1).transpose(0, 1).clamp(min=0)
        maps = d2.sqrt().reshape(-1, h, w)
        return masked_max(maps, valid), maps


class GaussianGraph(nn.Module):
    """Sum over stages of the Mahalanobis distance of valid-cell average-pooled stage features (float64)."""

    def __init__(self, detector) -> None:
        super().__init__()
        self.extractor = detector.extractor
        self.net = detector.extractor.net
        self.n_stages = len(detector.means_)
        for i, (mu, prec) in enumerate(zip(detector.means_, detector.precisions_)):
            self.register_buffer(f"mean_{i}", mu.double().clone())
            self.register_buffer(f"precision_{i}", prec.double().clone())

    def forward(self, image: Tensor, valid: Tensor) -> Tensor:
        stages = self.extractor.backbone_only(image)
        total = None
        for i, f in enumerate(stages[: self.n_stages]):
            mu, prec = getattr(self, f"mean_{i}"), getattr(self, f"precision_{i}")
            v = F.interpolate(valid[:, None].float(), size=f.shape[-2:], mode="nearest")
            pooled = (f * v).sum((2, 3)) / v.sum((2, 3)).clamp(min=1)
            d = pooled.double() - mu
            m = (torch.matmul(d, prec) * d).sum(-1).clamp(min=0).sqrt()
            total = m if total is None else total + m
        return total


def check_exportable(detector) -> None:
    """Raise ParameterError unless `detector` is a fitted detector whose scoring this module can express."""
    name = getattr(detector, "name", type(detector).__name__)
    if name not in EXPORTABLE:
        raise ParameterError(f"detector {name!r} cannot be exported to ONNX; exportable detectors: "
                             f"{', '.join(EXPORTABLE)}")
    detector.check_fitted()
    if name == "patchcore" and getattr(detector, "reweight", False):
        raise ParameterError("patchcore with reweight=True cannot be exported to ONNX (its eq. 7 reweighting is "
                             "not in the graph); refit with reweight=False")


def build_graph(detector) -> nn.Module:
    """The scoring module of a fitted, exportable detector (eval mode)."""
    check_exportable(detector)
    if detector.name == "patchcore" and getattr(detector, "_index", None) is not None:
        warnings.warn(f"this PatchCore searches its bank approximately (search={detector.search!r}); the ONNX graph "
                      "searches it exactly, so its scores can be slightly lower (never higher) than the torch "
                      "model's", UserWarning, stacklevel=3)
    graph = {"patchcore": PatchCoreGraph, "padim": PaDiMGraph, "gaussian": GaussianGraph}[detector.name]
    return graph(detector).eval()
