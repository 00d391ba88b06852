"""Transfer-learned zero-shot detection: a small patch head trained on other categories, applied without normals.

The prompt-learning zero-shot methods (AnomalyCLIP, AdaCLIP, ...) learn object-agnostic "normal"/"abnormal"
representations on auxiliary data with anomalies and apply them to unseen categories. This is that idea on our own
backbone: frozen EfficientNet-Lite0 patch features (stride 8 and 16, locally aggregated, on the few-shot detector's
reflect-padded canvas) are standardized *per image* (median and spread of each channel over the image's own cells:
no normal image of the target is ever seen, so the image itself is the reference). Each cell is then described by
object-agnostic statistics: how far its standardized channels stray (per stage), its distance to the other cells of
the same image (a defect is rare within its image), and the same over its neighbourhood; a 2-layer MLP maps them to
an anomaly logit per cell. The head is trained with the one training loop on real and synthesized anomalies with masks
(`benchmarks/train_zeroshot_head.py`) and shipped in `data/zeroshot_head.safetensors`.

`fit()` needs no images; `fit(normal_images)` scores them and keeps the scores for conformal calibration.
`intensity="auto"` gain-normalizes images (mean grey 0.5) before the backbone exactly when the head was trained so
(`intensity` in the head file's meta).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from normalcy.detectors.base import ScoreResult
from normalcy.detectors.image.fewshot import FewShot
from normalcy.errors import ModelFileError, ParameterError

BUILTIN_HEAD = Path(__file__).with_name("data") / "zeroshot_head.safetensors"
SELF_FRACTIONS = (0.02, 0.1, 0.25)  # k-th nearest other cell of the same image, as a fraction of its cells
SELF_EXCLUDE = 1  # cells within this Chebyshev radius are neighbours, not matches (aggregation overlaps them)
FEATURE_KEYS = ("backbone", "strides", "aggregate")  # what the head's inputs mean; size/canvas only change the scale
CONTEXT = 5  # neighbourhood (cells) of the local means of the cell statistics
WIDE = 11  # a wider neighbourhood (cells) for large, low-contrast defects; heads record it as meta "wide" (old: 0)
MAX_SELF_CELLS = 1024  # reference cells for the in-image distances (bigger grids: a seeded subsample)


# ---- the head's inputs (pure tensor functions, shared with benchmarks/train_zeroshot_head.py) ---------------------
def standardize_per_image(feats: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """B×C×h×w features → (x − median) / (1.4826·MAD) per image and channel over the image's valid cells."""
    out = torch.empty_like(feats, dtype=torch.float32)
    for i in range(feats.shape[0]):
        x = feats[i].float().flatten(1)[:, valid[i].flatten()]  # C×N
        med = x.median(dim=1).values
        mad = (x - med[:, None]).abs().median(dim=1).values * 1.4826
        floor = torch.clamp(mad.median() * 1e-2, min=1e-6)
        out[i] = (feats[i].float() - med[:, None, None]) / mad.clamp(min=floor)[:, None, None]
    return out


def self_distances(z: torch.Tensor, valid: torch.Tensor, fractions: Sequence[float] = SELF_FRACTIONS,
                   exclude: int = SELF_EXCLUDE, seed: int = 0) -> torch.Tensor:
    """B×K×h×w: log of each cell's distance to its k-th nearest non-adjacent cell of the same image (k a fraction
    of the image's cells), minus that log's median over the image, so the scale is the image's own."""
    b, c, h, w = z.shape
    out = torch.zeros((b, len(fractions), h, w))
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    pos = torch.stack([ys.flatten(), xs.flatten()], 1)
    for i in range(b):
        cells = valid[i].flatten().nonzero()[:, 0]
        if len(cells) > MAX_SELF_CELLS:  # seeded per image: a score never depends on the rest of its batch
            ref = cells[torch.randperm(len(cells), generator=torch.Generator().manual_seed(seed))[:MAX_SELF_CELLS]]
        else:
            ref = cells
        x = z[i].flatten(1).T  # N×C
        near = (pos[cells][:, None, :] - pos[ref][None, :, :]).abs().amax(2) <= exclude
        d = torch.cdist(x[cells], x[ref]).masked_fill_(near, float("inf"))
        m = d.shape[1]
        ks = [int(min(max(1, round(float(f) * m)), max(1, m - (2 * exclude + 1) ** 2))) for f in fractions]
        nearest = d.topk(max(ks), dim=1, largest=False).values  # ascending: column k-1 is the k-th nearest
        for j, k in enumerate(ks):
            v = nearest[:, k - 1].clamp(min=1e-6).log()
            v = torch.where(torch.isfinite(v), v, v[torch.isfinite(v)].max() if torch.isfinite(v).any() else 0.0)
            full = torch.zeros(h * w)
            full[cells] = v - v.median()
            out[i, j] = full.view(h, w)
    return out


def raw_inputs(feats: torch.Tensor, valid: torch.Tensor, fractions: Sequence[float] = SELF_FRACTIONS
               ) -> torch.Tensor:
    """B×(C+K)×h×w: per-image standardized features (clipped to ±20) and the K in-image distances."""
    z = standardize_per_image(feats, valid).clamp_(-20.0, 20.0)
    return torch.cat([z, self_distances(z, valid, fractions)], dim=1)


def local_mean(f: torch.Tensor, size: int) -> torch.Tensor:
    """Mean of B×D×h×w maps over a size×size neighbourhood (edges replicated)."""
    p = int(size) // 2
    return F.avg_pool2d(F.pad(f, (p, p, p, p), mode="replicate"), int(size), stride=1)


def cell_statistics(raw: torch.Tensor, splits: Sequence[int], context: int = CONTEXT, wide: int = 0) -> torch.Tensor:
    """B×(C+K)×h×w raw inputs → B×2S×h×w object-agnostic cell statistics, and their `context`-cell local means
    (and `wide`-cell ones when `wide` > 0: a defect larger than the context, e.g. a low-contrast band).

    Per backbone stage (`splits`: its channel counts in order): log RMS and log max of |z| and the share of channels
    with |z| > 3; plus the K in-image distances. Raw standardized channels mean different things on different
    textures (a head trained on them transfers badly: demo tiles → fabric 0.54 image AUROC); these statistics say
    only "how unusual is this cell within its image", which is what carries over to an unseen category.
    """
    c = int(sum(splits))
    if raw.shape[1] <= c:
        raise ParameterError(f"raw inputs have {raw.shape[1]} channels, expected more than the {c} feature channels")
    parts, start = [raw[:, c:]], 0
    for n in splits:
        a = raw[:, start : start + int(n)].abs()
        start += int(n)
        parts += [a.pow(2).mean(1, keepdim=True).sqrt().clamp(min=1e-3).log(),
                  a.amax(1, keepdim=True).clamp(min=1e-3).log(), (a > 3.0).float().mean(1, keepdim=True)]
    f = torch.cat(parts, dim=1)
    return torch.cat([f, local_mean(f, context)] + ([local_mean(f, wide)] if int(wide) > 0 else []), dim=1)


def input_dim(n_stages: int, n_fractions: int = len(SELF_FRACTIONS), wide: int = 0) -> int:
    """Width of the head inputs: (K distances + 3 statistics per stage), their local means (and wide ones)."""
    return (3 if int(wide) > 0 else 2) * (int(n_fractions) + 3 * int(n_stages))


def head_inputs(feats: torch.Tensor, valid: torch.Tensor, splits: Sequence[int],
                fractions: Sequence[float] = SELF_FRACTIONS, wide: int = 0) -> torch.Tensor:
    """B×D×h×w head inputs of B×C×h×w patch features: cell statistics of the per-image standardized features."""
    return cell_statistics(raw_inputs(feats, valid, fractions), splits, wide=wide)


class PatchHead(nn.Module):
    """A 2-layer MLP from head inputs (N×D) to one anomaly logit per cell."""

    def __init__(self, dim: int, hidden: int = 32, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("mean", torch.zeros(dim))  # input standardization, set from the training cells
        self.register_buffer("std", torch.ones(dim))
        self.w1 = nn.Parameter(torch.randn(dim, hidden, generator=gen) / dim**0.5)
        self.b1 = nn.Parameter(torch.zeros(hidden))
        self.w2 = nn.Parameter(torch.randn(hidden, 1, generator=gen) / hidden**0.5)
        self.b2 = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        return (torch.relu(x @ self.w1 + self.b1) @ self.w2 + self.b2)[:, 0]

    def maps(self, inputs: torch.Tensor) -> torch.Tensor:
        """B×D×h×w inputs → B×h×w logit maps."""
        b, d, h, w = inputs.shape
        with torch.no_grad():
            return self(inputs.permute(0, 2, 3, 1).reshape(-1, d)).view(b, h, w)


def train_head(x: torch.Tensor, y: torch.Tensor, *, hidden: int = 32, epochs: int = 15, batch_size: int = 2048,
               lr: float = 2e-3, weight_decay: float = 1e-4, seed: int = 0, progress: bool = False) -> PatchHead:
    """Class-balanced BCE of a PatchHead on N×D cell inputs and 0/1 labels, with the one training loop."""
    from normalcy.detectors.training import train

    y = y.float()
    n_pos = float(y.sum())
    if n_pos == 0 or n_pos == len(y):
        raise ParameterError(f"the zero-shot head needs normal and anomalous cells, got {int(n_pos)} anomalous "
                             f"of {len(y)}")
    head = PatchHead(x.shape[1], hidden, seed)
    head.mean.copy_(x.float().mean(0))
    head.std.copy_(x.float().std(0).clamp(min=1e-6))
    pos_weight = torch.tensor((len(y) - n_pos) / n_pos)
    loss = lambda xb, yb: F.binary_cross_entropy_with_logits(head(xb), yb, pos_weight=pos_weight)  # noqa: E731
    train(head, loss, (x.float(), y), epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
          seed=seed, progress=progress, desc="zero-shot head")
    return head


def save_head(head: PatchHead, path: str | Path, meta: dict[str, Any]) -> Path:
    """Write the head's weights and its feature settings / provenance (`meta`) as safetensors, atomically."""
    from safetensors.numpy import save_file

    from normalcy.data.files import atomic_path
    from normalcy.detectors.training import module_arrays

    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(module_arrays("head", head), str(tmp), metadata={"normalcy_zeroshot": json.dumps(meta)})
        tmp.chmod(0o644)  # package data: readable by everyone (the temporary file is created private)
    return path


def load_head(path: str | Path) -> tuple[PatchHead, dict[str, Any]]:
    """A head file written by `save_head` → (head in eval mode, its meta)."""
    from safetensors import SafetensorError, safe_open

    from normalcy.detectors.training import load_module

    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelFileError(f"zero-shot head file {path} not found; pass head='builtin' or the path of a file "
                             "written by benchmarks/train_zeroshot_head.py")
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = json.loads((f.metadata() or {}).get("normalcy_zeroshot", "null"))
            arrays = {k: f.get_tensor(k) for k in f.keys()}
        if not isinstance(meta, dict):
            raise ValueError("no 'normalcy_zeroshot' metadata")
        head = PatchHead(int(arrays["head.w1"].shape[0]), int(arrays["head.w1"].shape[1]))
        return load_module("head", head, arrays), meta
    except (SafetensorError, ValueError, KeyError, OSError) as exc:
        raise ModelFileError(f"{path} is not a zero-shot head file ({exc}); rebuild it with "
                             "benchmarks/train_zeroshot_head.py") from None


class ZeroShot(FewShot):
    """Each cell scored by a head trained on other categories' anomalies; no normal image of the target needed."""

    name = "zeroshot"
    zero_shot: ClassVar[bool] = True  # fit needs no normal data
    min_fit_items = 0

    def __init__(
        self,
        head: str = "builtin",
        backbone: str = "efficientnet_lite0",
        weights: str | Path | None = None,
        image_size: int = 256,
        resize_mode: str = "stretch",
        aspect: str = "keep",
        strides: Sequence[int] = (8, 16),
        aggregate: int = 3,
        pad: float = 0.125,
        border: float = 0.0625,
        top_fraction: float = 0.002,
        center: bool = False,
        sigma: float = 4.0,
        batch_size: int = 8,
        alpha: float = 0.05,
        pixel_fpr: float = 0.001,
        seed: int = 0,
        progress: bool = True,
        intensity: str | None = "auto",
    ) -> None:
        self._store_params(locals())

    project_dim: ClassVar[None] = None  # the extractor's width must be the head's
    transfer_table: ClassVar[None] = None  # no few-shot transfer table: conformal with fit images, else none

    # ---- the head -------------------------------------------------------------------------------------------
    def feature_config(self) -> dict[str, Any]:
        """The extraction settings the head's inputs depend on (stored in and checked against the head file)."""
        return {"backbone": self.backbone, "image_size": int(self.image_size), "aspect": self.aspect,
                "strides": [int(s) for s in self.strides], "aggregate": int(self.aggregate), "pad": float(self.pad)}

    def stage_splits(self) -> list[int]:
        """Channels of each backbone stage in the patch features, in order (the cell statistics are per stage)."""
        return [int(self.extractor.net.stage_channels[s]) for s in sorted(int(v) for v in self.strides)]

    def load_head(self) -> PatchHead:
        """The head named by `head` ("builtin" or a path), checked against this detector's feature settings."""
        if getattr(self, "_head_src", None) == self.head and getattr(self, "head_", None) is not None:
            return self.head_
        path = BUILTIN_HEAD if self.head == "builtin" else Path(str(self.head))
        head, meta = load_head(path)
        want = {k: v for k, v in self.feature_config().items() if k in FEATURE_KEYS}
        got = {k: meta.get("features", {}).get(k) for k in FEATURE_KEYS}
        if got != want:
            raise ParameterError(f"zero-shot head {path} was trained on features {got}, but this detector extracts "
                                 f"{want}; use the head's settings or train a head for these "
                                 "(benchmarks/train_zeroshot_head.py)")
        self.head_, self.head_meta_, self._head_src = head, meta, self.head
        return head

    def _auto_gain(self) -> bool:
        """"auto": gain-normalize (mean grey 0.5) exactly when the head was trained so (`intensity` in the head
        file's meta; heads without it saw raw images)."""
        self.load_head()
        return self.head_meta_.get("intensity") == "gain"

    # ---- fit: nothing to learn; optional calibration images -------------------------------------------------
    def fit(self, X: Any = None, y: Any = None, groups: Any = None) -> Self:
        """Zero-shot: loads the head. Given normal images, their scores become the (conformal) calibration set."""
        self.load_head()
        return self._calibrate_untrained(X, "split")

    def _fit(self, items: list) -> None:  # never called: fit is overridden
        raise NotImplementedError

    # ---- scoring ----------------------------------------------------------------------------------------------
    def image_scores(self, maps: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Mean of the top `top_fraction` scored cells (at least one), minus the image's median cell when `center`."""
        if not 0.0 < float(self.top_fraction) <= 1.0:
            raise ParameterError(f"top_fraction must be in (0, 1], got {self.top_fraction}")
        cells = self.score_cells(valid)
        flat = maps.masked_fill(~cells, float("-inf")).flatten(1)
        k = max(1, int(round(float(self.top_fraction) * int(cells[0].sum()))))
        scores = flat.topk(min(k, flat.shape[1]), dim=1).values.mean(1)
        if self.center:
            scores = scores - maps.masked_fill(~valid, float("nan")).flatten(1).nanmedian(dim=1).values
        return scores

    def _score_features(self, feats: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        head = self.load_head()
        fractions = self.head_meta_.get("fractions", SELF_FRACTIONS)
        maps = head.maps(head_inputs(feats, valid, self.stage_splits(), fractions, self.head_meta_.get("wide", 0)))
        return self.image_scores(maps, valid), maps

    def _score(self, items: list) -> ScoreResult:
        self.load_head()
        return super()._score(items)

    # ---- persistence: the head travels with the model file --------------------------------------------------
    def _state_arrays(self) -> dict[str, np.ndarray]:
        from normalcy.detectors.training import module_arrays

        return module_arrays("head", self.load_head())

    def _state_meta(self) -> dict[str, Any]:
        return {"head_meta": getattr(self, "head_meta_", {})}

    def _load_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        from normalcy.detectors.training import load_module

        w1 = arrays["head.w1"]
        self.head_ = load_module("head", PatchHead(int(w1.shape[0]), int(w1.shape[1])), arrays)
        self.head_meta_ = dict(meta.get("head_meta") or {})
        self._head_src = self.head
