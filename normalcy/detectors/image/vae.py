"""A compact convolutional VAE on backbone feature maps (reconstruction-based, in the spirit of StRegA).

The VAE compresses the standardized C×h×w patch-feature map into a small latent map at 1/4 of its resolution and
decodes it back; trained on normal data only, it reconstructs normal structure and fails on what it never saw.
With `context_mask` > 0 it also learns to fill in randomly masked rectangles from their surroundings (the
context-encoding idea of ceVAE, which StRegA builds on). Score map = per-cell squared reconstruction error.
Features, not pixels: a small VAE's pixel reconstructions are blurry, so fine normal texture would light up as
much as a defect; in feature space the error is semantic and the model stays small and fast on a CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from normalcy.detectors.image.trained import FeatureModelDetector
from normalcy.errors import ParameterError


class FeatureVAE(nn.Module):
    """Conv encoder to a latent map at 1/4 resolution (mean, log-variance) and a mirrored decoder."""

    def __init__(self, channels: int, hidden: int, latent: int) -> None:
        super().__init__()
        act = nn.LeakyReLU(0.2)
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, hidden, 1), act,
            nn.Conv2d(hidden, hidden, 3, stride=2, padding=1), act,
            nn.Conv2d(hidden, 2 * latent, 3, stride=2, padding=1),
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(latent, hidden, 3, padding=1), act, nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(hidden, hidden, 3, padding=1), act, nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(hidden, hidden, 3, padding=1), act, nn.Conv2d(hidden, channels, 1),
        )

    def forward(self, x: torch.Tensor, sample: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruction (same size as x), latent mean and log-variance."""
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        logvar = logvar.clamp(-10.0, 10.0)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if sample else mu
        recon = self.decoder(z)
        if recon.shape[-2:] != x.shape[-2:]:
            recon = F.interpolate(recon, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return recon, mu, logvar


class VAE(FeatureModelDetector):
    """Reconstruction error of a small convolutional VAE trained on normal patch-feature maps."""

    name = "vae"

    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        weights: str | Path | None = None,
        image_size: int = 256,
        resize_mode: str = "stretch",
        strides: Sequence[int] = (8, 16),
        aggregate: int = 3,
        project_dim: int | None = None,
        hidden: int = 64,
        latent: int = 32,
        beta: float = 1.0,
        context_mask: float = 0.0,
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
        if self.beta < 0 or not 0.0 <= self.context_mask < 1.0:
            raise ParameterError(f"beta must be >= 0 and context_mask in [0, 1), got {self.beta}, {self.context_mask}")
        return FeatureVAE(channels, int(self.hidden), int(self.latent))

    def _loss(self, net: nn.Module, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        inp = self._mask_context(x) if net.training and self.context_mask > 0 else x
        recon, mu, logvar = net(inp, sample=net.training)
        rec = 0.5 * (recon - x).pow(2).sum(dim=1)[valid].sum()
        kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum()
        return (rec + float(self.beta) * kl) / (valid.sum().clamp_min(1) * x.shape[1])

    def _mask_context(self, x: torch.Tensor) -> torch.Tensor:
        """Zero (= the normal mean) one random rectangle per image with probability `context_mask`."""
        b, _, h, w = x.shape
        out = x.clone()
        for i in range(b):
            if torch.rand(()) < self.context_mask:
                mh, mw = int(torch.randint(1, max(2, h // 2), ())), int(torch.randint(1, max(2, w // 2), ()))
                top, left = int(torch.randint(0, h - mh + 1, ())), int(torch.randint(0, w - mw + 1, ()))
                out[i, :, top : top + mh, left : left + mw] = 0.0
        return out

    def _patch_scores(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        recon, _, _ = net(x, sample=False)
        return (recon - x).pow(2).mean(dim=1)
