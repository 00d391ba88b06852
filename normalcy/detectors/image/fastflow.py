"""FastFlow (Yu et al., 2021): a 2-D normalizing flow on backbone feature maps; score = negative log-likelihood.

The flow is a stack of affine coupling blocks acting on the whole C×h×w map: half of the channels pass through and
condition a small conv subnet (alternating 3×3 and 1×1 kernels, as in the paper) that predicts a soft-clamped
log-scale and a shift for the other half; a fixed channel permutation mixes halves between blocks. The training
loss is the exact NLL of the standardized features under a standard normal base; a patch's score is its NLL.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from normalcy.detectors.image.trained import FeatureModelDetector
from normalcy.errors import ParameterError


class AffineCoupling(nn.Module):
    """y = [x1, x2·exp(s(x1)) + t(x1)] then a fixed channel permutation; returns the per-cell log|det|."""

    def __init__(self, channels: int, hidden: int, kernel: int, clamp: float) -> None:
        super().__init__()
        self.c1 = channels // 2
        c2 = channels - self.c1
        pad = kernel // 2
        self.subnet = nn.Sequential(
            nn.Conv2d(self.c1, hidden, kernel, padding=pad), nn.ReLU(), nn.Conv2d(hidden, 2 * c2, kernel, padding=pad)
        )
        nn.init.zeros_(self.subnet[-1].weight)  # start as the identity map: stable first steps
        nn.init.zeros_(self.subnet[-1].bias)
        self.clamp = clamp
        self.register_buffer("perm", torch.randperm(channels))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """B×C×h×w → (B×C×h×w, B×h×w log-determinant)."""
        x1, x2 = x[:, : self.c1], x[:, self.c1 :]
        s, t = self.subnet(x1).chunk(2, dim=1)
        s = self.clamp * torch.tanh(s / self.clamp)
        y = torch.cat([x1, x2 * torch.exp(s) + t], dim=1)
        return y[:, self.perm], s.sum(dim=1)


class Flow(nn.Module):
    """A chain of affine couplings whose subnet kernels alternate 3×3 and 1×1."""

    def __init__(self, channels: int, steps: int, hidden_ratio: float, clamp: float) -> None:
        super().__init__()
        hidden = max(8, int(round(channels // 2 * hidden_ratio)))
        self.blocks = nn.ModuleList(AffineCoupling(channels, hidden, 3 if i % 2 == 0 else 1, clamp)
                                    for i in range(steps))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features → (latent z of the same shape, per-cell log|det J| B×h×w)."""
        logdet = torch.zeros(x.shape[0], *x.shape[2:], dtype=x.dtype)
        for block in self.blocks:
            x, ld = block(x)
            logdet = logdet + ld
        return x, logdet

    def nll(self, x: torch.Tensor) -> torch.Tensor:
        """Per-cell negative log-likelihood (B×h×w) of the features under the flow."""
        z, logdet = self(x)
        return 0.5 * z.pow(2).sum(dim=1) + 0.5 * z.shape[1] * math.log(2 * math.pi) - logdet


class FastFlow(FeatureModelDetector):
    """2-D normalizing flow over standardized patch-feature maps; higher NLL = more anomalous."""

    name = "fastflow"
    grad_clip = 5.0

    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        weights: str | Path | None = None,
        image_size: int = 256,
        resize_mode: str = "stretch",
        strides: Sequence[int] = (8, 16),
        aggregate: int = 3,
        project_dim: int | None = None,
        flow_steps: int = 8,
        hidden_ratio: float = 0.5,
        clamp: float = 2.0,
        epochs: int = 20,
        train_batch: int = 8,
        lr: float = 1e-3,
        max_seconds: float | None = 120.0,
        patience: int | None = 5,
        val_fraction: float = 0.1,
        pad: float = 0.125,
        border: float = 0.0625,
        sigma: float = 4.0,
        batch_size: int = 16,
        alpha: float = 0.05,
        pixel_fpr: float = 0.001,
        calibration_fraction: float = 0.2,
        seed: int = 0,
        progress: bool = True,
    ) -> None:
        self._store_params(locals())

    def _build(self, channels: int) -> nn.Module:
        if int(self.flow_steps) < 1 or self.clamp <= 0 or self.hidden_ratio <= 0:
            raise ParameterError("flow_steps must be >= 1 and clamp, hidden_ratio > 0, got "
                                 f"{self.flow_steps}, {self.clamp}, {self.hidden_ratio}")
        return Flow(channels, int(self.flow_steps), float(self.hidden_ratio), float(self.clamp))

    def _loss(self, net: nn.Module, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return net.nll(x)[valid].mean() / x.shape[1]  # nats per dimension: comparable across channel counts

    def _patch_scores(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return net.nll(x)
