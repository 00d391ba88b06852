"""The light supervised head of the semi-supervised detector: positives on the feature grid, SMOTE, a small MLP.

Pure tensor functions so the detector and `benchmarks/semisup.py` share exactly the same code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from normalcy.detectors.training import train
from normalcy.errors import ParameterError
from normalcy.features.preprocess import Placement


def mask_to_grid(mask: np.ndarray, placement: Placement, size: int, grid: tuple[int, int]) -> torch.Tensor:
    """Fraction of each feature-grid cell covered by an image-size bool mask (same placement as the image)."""
    if mask.shape != (placement.height, placement.width):
        raise ParameterError(f"mask is {mask.shape} but its image is {(placement.height, placement.width)}")
    m = torch.from_numpy(mask.astype(np.float32))[None, None]
    m = F.interpolate(m, size=(placement.inner_h, placement.inner_w), mode="bilinear", align_corners=False)
    canvas = torch.zeros((1, 1, size, size))
    canvas[..., placement.top : placement.top + placement.inner_h,
           placement.left : placement.left + placement.inner_w] = m
    return F.adaptive_avg_pool2d(canvas, grid)[0, 0]


def positive_cells(cover: torch.Tensor | None, dist: torch.Tensor, valid: torch.Tensor, min_cover: float = 0.3,
                   top_k: int = 4) -> torch.Tensor:
    """Bool h×w cells taken as anomalous: covered ≥ `min_cover` by the mask (at least the best-covered cell),
    or, without a mask, the `top_k` cells farthest from normal (`dist`)."""
    if cover is not None:
        pos = (cover >= min_cover) & valid
        if not pos.any():
            pos = (cover == cover.masked_fill(~valid, -1).max()) & valid & (cover > 0)
        return pos
    flat = dist.masked_fill(~valid, float("-inf")).flatten()
    pos = torch.zeros_like(flat, dtype=torch.bool)
    pos[flat.topk(min(top_k, int(valid.sum()))).indices] = True
    return pos.view_as(dist)


def smote(points: torch.Tensor, n_new: int, seed: int, k: int = 5) -> torch.Tensor:
    """SMOTE: `n_new` points on segments between each sampled point and one of its k nearest neighbours."""
    if n_new <= 0 or len(points) == 0:
        return points[:0]
    g = torch.Generator().manual_seed(seed)
    if len(points) == 1:
        return points.repeat(n_new, 1)
    k = min(k, len(points) - 1)
    nb = torch.cdist(points, points).topk(k + 1, largest=False).indices[:, 1:]  # drop self
    i = torch.randint(len(points), (n_new,), generator=g)
    j = nb[i, torch.randint(k, (n_new,), generator=g)]
    lam = torch.rand(n_new, 1, generator=g)
    return points[i] + lam * (points[j] - points[i])


@dataclass
class Head:
    """A fitted 2-layer MLP on standardized patch features, with z-score stats of its logits on normal patches."""

    mean: torch.Tensor
    std: torch.Tensor
    w1: torch.Tensor
    b1: torch.Tensor
    w2: torch.Tensor
    b2: torch.Tensor
    logit_mu: float = 0.0
    logit_sd: float = 1.0

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """N×C features → N logits (higher = more like the labelled/synthetic anomalies)."""
        h = torch.relu(((x - self.mean) / self.std) @ self.w1 + self.b1)
        return (h @ self.w2 + self.b2)[:, 0]

    def z(self, x: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
        """Logits z-normalized on held-out normal patches."""
        out = torch.cat([self.logits(x[i : i + chunk]) for i in range(0, len(x), chunk)]) if len(x) else x[:, 0]
        return (out - self.logit_mu) / self.logit_sd

    def arrays(self) -> dict[str, np.ndarray]:
        """Tensors to save, by name."""
        stats = torch.tensor([self.logit_mu, self.logit_sd], dtype=torch.float64)
        return {f"head_{k}": v.numpy() for k, v in
                dict(mean=self.mean, std=self.std, w1=self.w1, b1=self.b1, w2=self.w2, b2=self.b2, stats=stats).items()}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> Head:
        """Rebuild from `arrays()` output."""
        t = {k[5:]: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items() if k.startswith("head_")}
        stats = t.pop("stats")
        return cls(**{k: v.float() for k, v in t.items()}, logit_mu=float(stats[0]), logit_sd=float(stats[1]))


class _HeadNet(nn.Module):
    """The head's 2-layer MLP as a module, so the one training loop can fit it."""

    def __init__(self, channels: int, hidden: int, gen: torch.Generator) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(channels, hidden, generator=gen) / np.sqrt(channels))
        self.b1 = nn.Parameter(torch.zeros(hidden))
        self.w2 = nn.Parameter(torch.randn(hidden, 1, generator=gen) / np.sqrt(hidden))
        self.b2 = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (torch.relu(x @ self.w1 + self.b1) @ self.w2 + self.b2)[:, 0]


def train_head(neg: torch.Tensor, pos: torch.Tensor, held_out: torch.Tensor, hidden: int = 32, epochs: int = 100,
               lr: float = 3e-3, weight_decay: float = 1e-3, seed: int = 0) -> Head:
    """Class-balanced BCE on normal (`neg`) vs anomalous (`pos`) patches, full batch, with the one training loop;
    z-stats of the logits are taken on `held_out` normal patches the head never saw."""
    if len(neg) == 0 or len(pos) == 0:
        raise ParameterError(f"the head needs normal and anomalous patches, got {len(neg)} and {len(pos)}")
    x = torch.cat([neg, pos]).float()
    y = torch.cat([torch.zeros(len(neg)), torch.ones(len(pos))])
    mean, std = neg.float().mean(0), neg.float().std(0).clamp_min(1e-6)
    net = _HeadNet(x.shape[1], hidden, torch.Generator().manual_seed(seed))
    pos_weight = torch.tensor(len(neg) / len(pos))
    loss = lambda xb, yb: F.binary_cross_entropy_with_logits(net(xb), yb, pos_weight=pos_weight)  # noqa: E731
    train(net, loss, ((x - mean) / std, y), epochs=epochs, batch_size=len(x), lr=lr, weight_decay=weight_decay,
          schedule="constant", seed=seed, desc="semi-supervised head")
    head = Head(mean, std, *(p.detach() for p in (net.w1, net.b1, net.w2, net.b2)))
    with torch.no_grad():
        ref = head.logits(held_out.float())
    head.logit_mu, head.logit_sd = float(ref.mean()), float(ref.std().clamp_min(1e-6))
    return head
