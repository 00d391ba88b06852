"""EfficientAD (Batzner et al., WACV 2024): a small student (and optionally an autoencoder) regress a frozen teacher.

Teacher: our frozen backbone's patch features (the C = 152 channels of strides 8 and 16 for EfficientNet-Lite0,
or `project_dim` channels of the extractor's fixed random projection), standardized per channel on the training
images. This replaces the paper's PDN teacher distilled from a WideResNet on ImageNet (we ship no ImageNet data).
Student: a small patch-description conv net on the image; its first C output channels regress the teacher with the
hard-feature loss (mean of the top `hard_fraction` of squared errors). The local map is the student–teacher error.
With `autoencoder=True` the student has C more channels that regress an autoencoder (conv encoder to a `latent`
vector, conv decoder to the teacher grid, trained on the teacher), and the global (logical) map is the
student–autoencoder error. Each map is normalized by the 0.9 and 0.995 quantiles of its values on held-out normal
images (→ 0 and 0.1), then the maps are averaged.

Teacher and student see the same reflect-padded canvas (`pad`), and a thin `border` band never decides the image
score: with zero padding the maximum sat on the image border in 99% of magnetic_tile test images.
The autoencoder is off by default: in a two-minute CPU budget it does not train, and its near-constant map,
stretched by its own tiny quantile spread, drowned the local map (global map alone: image AUROC 0.43, below
chance, on a magnetic_tile subsample; see docs/trained.md). Not included: the ImageNet penalty and the
autoencoder's input augmentation (both need data or teacher passes we do not have; features are extracted once).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from normalcy.detectors.base import ScoreResult
from normalcy.detectors.image.common import CachedFeatures, ImageDetector, border_cells
from normalcy.detectors.image.trained import FeatureModelDetector, channel_stats, restore_unpadded, smoothed_max
from normalcy.detectors.training import load_module, module_arrays, seeded, split_items, train
from normalcy.errors import ParameterError
from normalcy.features.extractor import pad_cells
from normalcy.features.preprocess import prepare_batch, restore_maps, valid_grid

QUANTILES = (0.9, 0.995)
AE_INPUT = 64  # the autoencoder sees the whole image at this size
TRAIN_CROP = 16  # the student trains on random windows of this many teacher cells (4× cheaper steps at 256 px)
STUDENT_STRIDE = 8


def _image_input(x: torch.Tensor) -> torch.Tensor:
    """uint8 or [0,1] B×3×S×S → roughly zero-mean, unit-scale network input."""
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x
    return (x - 0.45) / 0.25


def padded_input(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Student input: `_image_input` of the images with `pad` pixels of reflected image around them."""
    z = _image_input(x)
    if pad:
        z = F.pad(z, (pad,) * 4, mode="reflect" if pad < min(z.shape[-2:]) else "replicate")
    return z


class Student(nn.Module):
    """PDN-like student: four convs, output stride 8, receptive field 34 px."""

    def __init__(self, out_channels: int, width: int) -> None:
        super().__init__()
        w = width
        self.net = nn.Sequential(
            nn.Conv2d(3, w, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(w, 2 * w, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(4 * w, 4 * w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(4 * w, out_channels, 1),
        )

    def forward(self, z: torch.Tensor, grid: tuple[int, int], crop: int = 0) -> torch.Tensor:
        """Network input (see `_image_input`, possibly padded) → B×out×grid, dropping `crop` padding cells per side."""
        y = self.net(z)
        if crop:
            y = y[..., crop : y.shape[-2] - crop, crop : y.shape[-1] - crop]
        return y if tuple(y.shape[-2:]) == grid else F.interpolate(y, size=grid, mode="bilinear", align_corners=False)


class AutoEncoder(nn.Module):
    """Whole image at 64×64 → `latent`-dim code → conv decoder to the teacher grid (sees global layout only)."""

    def __init__(self, out_channels: int, width: int, latent: int) -> None:
        super().__init__()
        w = width
        layers: list[nn.Module] = []
        for cin, cout in ((3, w), (w, 2 * w), (2 * w, 2 * w)):
            layers += [nn.Conv2d(cin, cout, 4, stride=2, padding=1), nn.ReLU()]
        self.encoder = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(8), nn.Flatten(), nn.Linear(2 * w * 64, latent))
        self.expand = nn.Linear(latent, 2 * w * 16)
        self.up = nn.ModuleList(nn.Conv2d(2 * w, 2 * w, 3, padding=1) for _ in range(2))
        self.head = nn.Conv2d(2 * w, out_channels, 1)
        self.width = w

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Images → B×out×grid reconstruction of the teacher features."""
        small = F.interpolate(_image_input(x), size=(AE_INPUT, AE_INPUT), mode="bilinear", antialias=True)
        h = self.expand(F.relu(self.encoder(small))).view(-1, 2 * self.width, 4, 4)
        gh, gw = grid
        for k, conv in zip((4, 2), self.up):
            h = F.relu(conv(F.interpolate(h, size=(math.ceil(gh / k), math.ceil(gw / k)), mode="bilinear")))
        return self.head(F.interpolate(h, size=grid, mode="bilinear"))


class EfficientADModel(nn.Module):
    """Student (and, with `autoencoder`, the autoencoder) trained together."""

    def __init__(self, channels: int, width: int, latent: int, autoencoder: bool = True) -> None:
        super().__init__()
        self.student = Student((2 if autoencoder else 1) * channels, width)
        self.ae = AutoEncoder(channels, width, latent) if autoencoder else None
        self.channels = channels

    def maps(self, x: torch.Tensor, teacher: torch.Tensor, pad: int = 0) -> list[torch.Tensor]:
        """B×h×w maps: [local] or [local, global] = student–teacher and student–autoencoder squared errors."""
        grid = tuple(teacher.shape[-2:])
        s = self.student(padded_input(x, pad), grid, pad // STUDENT_STRIDE)
        c = self.channels
        out = [(teacher - s[:, :c]).pow(2).mean(1)]
        if self.ae is not None:
            out.append((self.ae(x, grid) - s[:, c:]).pow(2).mean(1))
        return out


class EfficientAD(ImageDetector):
    """Student–teacher and autoencoder discrepancies on a frozen-backbone teacher; built for fast inference."""

    name = "efficientad"
    min_fit_items = 4

    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        weights: str | Path | None = None,
        image_size: int = 256,
        resize_mode: str = "stretch",
        strides: Sequence[int] = (8, 16),
        aggregate: int = 1,
        project_dim: int | None = None,
        width: int = 32,
        autoencoder: bool = False,
        latent: int = 64,
        hard_fraction: float = 0.1,
        pad: float = 0.125,
        border: float = 0.0625,
        epochs: int = 15,
        train_batch: int = 8,
        lr: float = 1e-3,
        max_seconds: float | None = 120.0,
        patience: int | None = 5,
        val_fraction: float = 0.1,
        sigma: float = 4.0,
        batch_size: int = 16,
        alpha: float = 0.05,
        pixel_fpr: float = 0.001,
        calibration_fraction: float = 0.2,
        seed: int = 0,
        progress: bool = True,
    ) -> None:
        self._store_params(locals())

    def _batches(self, items: list, desc: str) -> Iterator[tuple[torch.Tensor, torch.Tensor, list, torch.Tensor]]:
        """(uint8 images, teacher features, placements, valid cells) per batch, with a progress bar."""
        from normalcy.data import as_rgb_array
        from normalcy.data.progress import progress_bar

        size, step = int(self.image_size), int(self.batch_size)
        bar = progress_bar(total=len(items), desc=desc, unit="img", disable=not self.progress, leave=False)
        try:
            for start in range(0, len(items), step):
                chunk = items[start : start + step]
                cached = all(isinstance(c, CachedFeatures) and not c.raw for c in chunk)
                arrays = [as_rgb_array(c.source if isinstance(c, CachedFeatures) else c) for c in chunk]
                x, placements = prepare_batch(arrays, size, self.resize_mode)
                feats = torch.stack([c.feats for c in chunk]) if cached else self.extractor(x)
                valid = valid_grid(placements, size, tuple(feats.shape[-2:]))
                yield x.mul(255).round().to(torch.uint8), feats, placements, valid
                bar.update(len(arrays))
        finally:
            bar.close()

    # teacher and student see a reflect-padded canvas; the image score skips a border band (as in the few-shot detector)
    extractor = FeatureModelDetector.extractor
    score_cells = FeatureModelDetector.score_cells

    def _pad_px(self) -> int:
        """Reflect padding around the canvas in pixels (teacher and student see the same padded image)."""
        stride = min(self.strides)
        return pad_cells(self.pad, int(self.image_size), stride) * stride

    def _fit(self, items: list) -> None:
        if not 0.0 < self.hard_fraction <= 1.0:
            raise ParameterError(f"hard_fraction must be in (0, 1], got {self.hard_fraction}")
        border_cells(self.border, 1)  # a bad `border` fails before any work
        imgs, feats, valid = [], [], []
        for x, f, _, v in self._batches(items, "fit features"):
            imgs.append(x)
            feats.append(f)
            valid.append(v)
        x_all, f_all, v_all = torch.cat(imgs), torch.cat(feats), torch.cat(valid)
        mean, std = channel_stats(f_all, v_all)
        t_all = (f_all - mean[:, None, None]) / std[:, None, None]
        tr, va = split_items(len(items), float(self.val_fraction), int(self.seed))
        with seeded(int(self.seed)):
            net = EfficientADModel(t_all.shape[1], int(self.width), int(self.latent), bool(self.autoencoder))
        result = train(
            net, lambda xb, tb, vb: self._loss(net, xb, tb, vb), (x_all[tr], t_all[tr], v_all[tr]),
            (x_all[va], t_all[va], v_all[va]) if len(va) else None, epochs=int(self.epochs),
            batch_size=int(self.train_batch), lr=float(self.lr), weight_decay=1e-5, max_seconds=self.max_seconds,
            patience=self.patience, seed=int(self.seed), progress=bool(self.progress), desc="efficientad train",
        )
        self.mean_, self.std_, self.net_, self.train_result_ = mean, std, net, result.to_meta()
        norm_idx = va if len(va) else tr  # map quantiles from held-out normal images when there are any
        with torch.inference_mode():
            maps = net.maps(x_all[norm_idx], t_all[norm_idx], self._pad_px())
        vmask = v_all[norm_idx]
        self.quantiles_ = torch.tensor([[torch.quantile(_sample(m[vmask]), q).item() for q in QUANTILES]
                                        for m in maps])

    def _loss(self, net: EfficientADModel, x: torch.Tensor, t: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Hard student–teacher loss (+ autoencoder–teacher and student–autoencoder losses), paper eq. 1–3."""
        grid = tuple(t.shape[-2:])
        a = net.ae(x, grid) if net.ae is not None else None
        pad = self._pad_px()
        z = padded_input(x, pad)
        if net.training and max(grid) > TRAIN_CROP:  # same window of teacher, autoencoder output and student input
            top = int(torch.randint(0, max(grid[0] - TRAIN_CROP, 0) + 1, ()))
            left = int(torch.randint(0, max(grid[1] - TRAIN_CROP, 0) + 1, ()))
            cell = min(self.strides)
            win = (slice(top, top + TRAIN_CROP), slice(left, left + TRAIN_CROP))
            t, valid = t[..., win[0], win[1]], valid[:, win[0], win[1]]
            a = a[..., win[0], win[1]] if a is not None else None
            # the student's window keeps `pad` pixels of real (or reflected) context on every side
            span = cell * TRAIN_CROP + 2 * pad
            z = z[..., cell * top : cell * top + span, cell * left : cell * left + span]
            grid = tuple(t.shape[-2:])
        s = net.student(z, grid, pad // STUDENT_STRIDE)
        c = net.channels
        d = (t - s[:, :c]).pow(2).permute(0, 2, 3, 1)[valid].flatten()
        k = max(1, int(math.ceil(float(self.hard_fraction) * d.numel())))
        loss = d.topk(k).values.mean() if k < d.numel() else d.mean()
        if a is not None:
            loss = loss + (t - a).pow(2).permute(0, 2, 3, 1)[valid].mean()
            loss = loss + (a.detach() - s[:, c:]).pow(2).permute(0, 2, 3, 1)[valid].mean()
        return loss

    def _normalized_map(self, x: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """The anomaly map: each branch scaled so its 0.9→0 and 0.995→0.1 on normal images, then averaged."""
        t = (feats - self.mean_[:, None, None]) / self.std_[:, None, None]
        q = self.quantiles_
        scale = (q[:, 1] - q[:, 0]).clamp_min(1e-12)
        maps = self.net_.maps(x, t, self._pad_px())
        return sum(0.1 * (m - q[i, 0]) / scale[i] for i, m in enumerate(maps)) / len(maps)

    def _score(self, items: list) -> ScoreResult:
        scores, maps = [], []
        with torch.inference_mode():
            for x, feats, placements, valid in self._batches(items, "score"):
                m = self._normalized_map(x, feats)
                scores.append(smoothed_max(m, self.score_cells(valid)).double().numpy())
                maps.extend(restore_maps(m, placements, int(self.image_size), float(self.sigma)))
        return ScoreResult(np.concatenate(scores), maps)

    # ---- persistence --------------------------------------------------------------------------------------
    def _state_arrays(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean_.numpy(), "std": self.std_.numpy(), "quantiles": self.quantiles_.numpy(),
                **module_arrays("net", self.net_)}

    def _state_meta(self) -> dict[str, Any]:
        return {"train": self.train_result_, "padded": True}

    def _load_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        if not meta.get("padded", False):  # written before `pad`/`border`/`autoencoder`: always had the autoencoder
            self.autoencoder = any(k.startswith("net.ae.") for k in arrays)
        restore_unpadded(self, meta)
        self.mean_ = torch.from_numpy(np.ascontiguousarray(arrays["mean"], dtype=np.float32))
        self.std_ = torch.from_numpy(np.ascontiguousarray(arrays["std"], dtype=np.float32))
        self.quantiles_ = torch.from_numpy(np.ascontiguousarray(arrays["quantiles"], dtype=np.float32))
        net = EfficientADModel(self.mean_.numel(), int(self.width), int(self.latent), bool(self.autoencoder))
        self.net_ = load_module("net", net, arrays)
        self.train_result_ = dict(meta.get("train", {}))


def _sample(values: torch.Tensor, limit: int = 1_000_000) -> torch.Tensor:
    """At most `limit` evenly spaced sorted values (torch.quantile has an input-size limit)."""
    if values.numel() <= limit:
        return values.float()
    return values.sort().values[torch.linspace(0, values.numel() - 1, limit).long()].float()
