"""SimpleNet (Liu et al., CVPR 2023): adapted patch features vs. Gaussian-noised copies; a small discriminator.

A linear feature adaptor maps frozen backbone patch features to a target space; anomalous features are synthesized
by adding Gaussian noise there; a two-layer MLP discriminator learns to score normal patches above +margin and
noised ones below -margin (truncated L1 loss). At test time the patch score is minus the discriminator output.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from normalcy.detectors.image.trained import FeatureModelDetector
from normalcy.errors import ParameterError

ROWS_PER_STEP = 4096


class SimpleNetModel(nn.Module):
    """1×1 feature adaptor followed by an MLP discriminator (applied per patch)."""

    def __init__(self, channels: int, embed_dim: int, hidden: int) -> None:
        super().__init__()
        self.adaptor = nn.Linear(channels, embed_dim)
        # start as the identity (a norm-preserving map when the sizes differ): `noise_std` is then in units of the
        # standardized features, and no feature direction starts squashed, as a random square matrix would do
        if embed_dim == channels:
            nn.init.eye_(self.adaptor.weight)
        else:
            nn.init.orthogonal_(self.adaptor.weight)
        nn.init.zeros_(self.adaptor.bias)
        self.disc = nn.Sequential(
            nn.Linear(embed_dim, hidden), nn.BatchNorm1d(hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 1, bias=False)
        )

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        """N×C patch features → N discriminator outputs (high = normal)."""
        return self.disc(self.adaptor(rows))[:, 0]


class SimpleNet(FeatureModelDetector):
    """Discriminator trained to tell adapted normal patch features from Gaussian-noised ones."""

    name = "simplenet"

    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        weights: str | Path | None = None,
        image_size: int = 256,
        resize_mode: str = "stretch",
        strides: Sequence[int] = (8, 16),
        aggregate: int = 3,
        project_dim: int | None = None,
        embed_dim: int | None = None,
        hidden: int = 256,
        noise_std: float = 0.25,
        margin: float = 0.5,
        epochs: int = 20,
        train_batch: int = 8,
        lr: float = 1e-3,
        max_seconds: float | None = 120.0,
        patience: int | None = 5,
        val_fraction: float = 0.1,
        pad: float = 0.0,
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
        if self.noise_std <= 0 or self.margin <= 0:
            raise ParameterError(f"noise_std and margin must be > 0, got {self.noise_std} and {self.margin}")
        return SimpleNetModel(channels, int(self.embed_dim or channels), int(self.hidden))

    def _loss(self, net: nn.Module, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        rows = x.permute(0, 2, 3, 1)[valid]
        if len(rows) > ROWS_PER_STEP:  # a random subset of the batch's patches: cheaper steps, more of them
            rows = rows[torch.randperm(len(rows))[:ROWS_PER_STEP]]
        adapted = net.adaptor(rows)
        fake = adapted + torch.randn_like(adapted) * float(self.noise_std)
        out = net.disc(torch.cat([adapted, fake]))[:, 0]
        real, noised = out[: len(rows)], out[len(rows) :]
        return F.relu(self.margin - real).mean() + F.relu(self.margin + noised).mean()

    def _patch_scores(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        return -net(x.permute(0, 2, 3, 1).reshape(-1, c)).view(b, h, w)
