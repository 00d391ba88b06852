"""The light supervised head of the semi-supervised detector: positives on the feature grid, SMOTE, a small MLP.

Pure tensor functions so the detector and `benchmarks/semisup.py` share exactly the same code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from normalcy.errors import ParameterError, TrainingError
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


def _adam_step(q: torch.Tensor, grad: torch.Tensor, m: torch.Tensor, v: torch.Tensor, lr: float, step: int,
               beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8) -> None:
    """One in-place Adam update (written out: constructing torch.optim.Adam imports torch._dynamo, ~5 s)."""
    m.mul_(beta1).add_(grad, alpha=1 - beta1)
    v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    denom = (v / (1 - beta2 ** step)).sqrt_().add_(eps)
    q.addcdiv_(m, denom, value=-lr / (1 - beta1 ** step))


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


def train_head(neg: torch.Tensor, pos: torch.Tensor, held_out: torch.Tensor, hidden: int = 32, epochs: int = 100,
               lr: float = 3e-3, weight_decay: float = 1e-3, seed: int = 0) -> Head:
    """Class-balanced BCE on normal (`neg`) vs anomalous (`pos`) patches, full batch with Adam; z-stats of the
    logits are taken on `held_out` normal patches the head never saw."""
    if len(neg) == 0 or len(pos) == 0:
        raise ParameterError(f"the head needs normal and anomalous patches, got {len(neg)} and {len(pos)}")
    g = torch.Generator().manual_seed(seed)
    x = torch.cat([neg, pos]).float()
    y = torch.cat([torch.zeros(len(neg)), torch.ones(len(pos))])
    mean, std = neg.float().mean(0), neg.float().std(0).clamp_min(1e-6)
    xs = (x - mean) / std
    c = x.shape[1]
    w1 = (torch.randn(c, hidden, generator=g) / np.sqrt(c)).requires_grad_()
    b1 = torch.zeros(hidden, requires_grad=True)
    w2 = (torch.randn(hidden, 1, generator=g) / np.sqrt(hidden)).requires_grad_()
    b2 = torch.zeros(1, requires_grad=True)
    params = [w1, b1, w2, b2]
    moments = [(torch.zeros_like(q), torch.zeros_like(q)) for q in params]
    pos_weight = torch.tensor(len(neg) / len(pos))
    for step in range(1, epochs + 1):
        logit = (torch.relu(xs @ w1 + b1) @ w2 + b2)[:, 0]
        loss = F.binary_cross_entropy_with_logits(logit, y, pos_weight=pos_weight)
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for q, grad, (m, v) in zip(params, grads, moments):
                _adam_step(q, grad + weight_decay * q, m, v, lr, step)
    if not torch.isfinite(loss):
        raise TrainingError("the semi-supervised head diverged (non-finite loss); no head was kept")
    head = Head(mean, std, w1.detach(), b1.detach(), w2.detach(), b2.detach())
    with torch.no_grad():
        ref = head.logits(held_out.float())
    head.logit_mu, head.logit_sd = float(ref.mean()), float(ref.std().clamp_min(1e-6))
    return head
