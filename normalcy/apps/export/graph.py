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


def _standardize(graph: nn.Module, detector) -> None:
    """Register patchcore's per-channel standardization (`standardize=True`) so the graph applies it too."""
    stats = getattr(detector, "_stats", None)
    graph.standardized = stats is not None
    if stats is not None:
        graph.register_buffer("feat_mean", stats.mean.float().clone().view(1, -1, 1, 1))
        graph.register_buffer("feat_scale", stats.scale.float().clone().view(1, -1, 1, 1))


def _positional(graph: nn.Module, detector) -> None:
    """Register patchcore's per-position Gaussian and fusion norms (`positional=True`) so the graph fuses too."""
    fusion = getattr(detector, "_fusion", None)
    graph.positional = fusion is not None
    if fusion is not None:
        chans, mean, precision = detector._position
        graph.register_buffer("pos_channels", chans.clone())
        graph.register_buffer("pos_mean", mean.float().clone())
        graph.register_buffer("pos_precision", precision.float().clone())
        graph.register_buffer("fusion_norms", fusion.float().clone())


def _fused(graph: nn.Module, feats: Tensor, maps: Tensor) -> Tensor:
    """Patchcore's fused map, as in its `_score_features`: z(NN distance) + z(per-position Mahalanobis).

    `feats` are the (standardized) grid features the NN search used; the Gaussians were fitted on the same."""
    if not graph.positional:
        return maps
    f = feats[:, graph.pos_channels].flatten(2).permute(0, 2, 1)  # B×P×C
    dp = (f - graph.pos_mean[None]).transpose(0, 1)
    pos = (torch.bmm(dp, graph.pos_precision) * dp).sum(-1).transpose(0, 1).clamp(min=0).sqrt().reshape(maps.shape)
    n = graph.fusion_norms
    return (maps - n[0]) / n[1] + (pos - n[2]) / n[3]


class PatchCoreGraph(nn.Module):
    """Exact nearest-neighbour distance of every patch to the memory bank, ‖a‖² − 2ab + ‖b‖², min, sqrt."""

    def __init__(self, detector) -> None:
        super().__init__()
        self.extractor = detector.extractor
        self.net = detector.extractor.net  # registered so the backbone weights become named initializers
        _standardize(self, detector)
        _positional(self, detector)
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

    def queries(self, image: Tensor) -> tuple[Tensor, int, int, Tensor]:
        """Patch features of the batch as B×P×C queries (standardized like the torch model's), and the grid."""
        feats = self.extractor(image)
        if self.standardized:
            feats = (feats - self.feat_mean) / self.feat_scale
        h, w = feats.shape[-2:]
        return feats.flatten(2).transpose(1, 2), h, w, feats

    def forward(self, image: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        q, h, w, raw = self.queries(image)
        q_sq = q.pow(2).sum(-1, keepdim=True)
        best = None
        for i in range(self.n_chunks):
            bank, bank_sq = getattr(self, f"bank_{i}"), getattr(self, f"bank_sq_{i}")
            d2 = torch.matmul(q, bank.T).mul(-2.0).add(bank_sq).add(q_sq).amin(-1)
            best = d2 if best is None else torch.minimum(best, d2)
        maps = _fused(self, raw, best.clamp(min=0).sqrt().reshape(-1, h, w))
        return masked_max(maps, valid), maps


class PatchCoreIVFGraph(PatchCoreGraph):
    """The torch model's own IVF search, in the graph: each patch is compared with the entries of its `n_probe`
    nearest k-means lists only (same centroids, same lists, same probes), so the ONNX model finds the same
    neighbours as the torch model and costs about n_probe·list_size distances per patch instead of the bank size.

    `forward` states the computation in torch; the export writes it as one ONNX Loop over the lists
    (normalcy/apps/export/ivf.py) instead of tracing this Python loop, which would unroll into thousands of nodes
    and make loading the file slow. Largest intermediate: patches-probing-one-list × list rows.
    """

    def __init__(self, detector) -> None:
        nn.Module.__init__(self)
        index = detector._index
        self.extractor = detector.extractor
        self.net = detector.extractor.net
        _standardize(self, detector)
        _positional(self, detector)
        self.n_probe = min(int(index.n_probe), int(index.centroids.shape[0]))
        self.register_buffer("centroids", index.centroids.float().clone())
        self.register_buffer("centroid_sq", index.centroids.float().pow(2).sum(1))
        bank = _as_float_tensor(index.sorted_bank)
        starts = [int(s) for s in index.starts.tolist()]
        self.lists: list[int] = []  # ids of the non-empty lists, each with its rows as one buffer
        for lst in range(len(starts) - 1):
            s, e = starts[lst], starts[lst + 1]
            if e > s:
                rows = bank[s:e].contiguous()
                self.register_buffer(f"list_{lst}", rows)
                self.register_buffer(f"list_sq_{lst}", rows.pow(2).sum(1))
                self.lists.append(lst)

    def forward(self, image: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        q3, h, w, raw = self.queries(image)
        q = q3.reshape(-1, q3.shape[-1])  # (B·P)×C
        q_sq = q.pow(2).sum(1)
        d2c = torch.matmul(q, self.centroids.T).mul(-2.0).add(self.centroid_sq).add(q_sq[:, None])
        probes = torch.topk(d2c, self.n_probe, dim=1, largest=False).indices  # (B·P)×n_probe list ids
        best = torch.full_like(q_sq, float("inf"))
        for lst in self.lists:
            rows, rows_sq = getattr(self, f"list_{lst}"), getattr(self, f"list_sq_{lst}")
            who = torch.nonzero((probes == lst).sum(1) > 0)[:, 0]
            d2 = torch.matmul(q[who], rows.T).mul(-2.0).add(rows_sq).add(q_sq[who][:, None]).amin(1)
            best = best.index_put((who,), torch.minimum(best[who], d2))
        maps = _fused(self, raw, best.clamp(min=0).sqrt().reshape(-1, h, w))
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
    if name == "patchcore" and getattr(detector, "_modes", None) is not None:
        raise ParameterError("patchcore fitted with per-mode scoring (modes='auto' or groups='auto' found "
                             f"{detector.n_modes_} modes) cannot be exported to ONNX (the graph has one position "
                             "term); refit with modes=None")
    if name == "patchcore" and getattr(detector, "_context", None) is not None:
        raise ParameterError("patchcore with context=True cannot be exported to ONNX (the graph has no context "
                             "term); refit with context=False")
    if name == "patchcore" and tuple(getattr(detector, "test_views", ("identity",))) != ("identity",):
        raise ParameterError(f"patchcore with test_views={tuple(detector.test_views)!r} cannot be exported to ONNX "
                             "(the graph scores one view); set test_views=('identity',) before exporting")


def build_graph(detector) -> nn.Module:
    """The scoring module of a fitted, exportable detector (eval mode)."""
    check_exportable(detector)
    if detector.name == "patchcore" and search_mode(detector) == "ivf":
        return PatchCoreIVFGraph(detector).eval()
    if detector.name == "patchcore" and getattr(detector, "_index", None) is not None:
        warnings.warn(f"this PatchCore searches its bank with faiss (search={detector.search!r}); the ONNX graph "
                      "searches it exactly, so its scores can be slightly lower (never higher) than the torch "
                      "model's", UserWarning, stacklevel=3)
    graph = {"patchcore": PatchCoreGraph, "padim": PaDiMGraph, "gaussian": GaussianGraph}[detector.name]
    return graph(detector).eval()


def search_mode(detector) -> str:
    """How the exported patchcore graph searches: "ivf" (the torch model's own IVF index, same neighbours) or
    "exact" (every bank row: exact torch search, or faiss indexes, which the graph cannot reproduce)."""
    from normalcy.detectors.image.search import IVFIndex

    return "ivf" if isinstance(getattr(detector, "_index", None), IVFIndex) else "exact"
