"""Patch features from a frozen backbone: several stages, local aggregation, optional random projection."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from normalcy.errors import ParameterError


@functools.lru_cache(maxsize=4)
def _cached_backbone(name: str, weights: str | None):
    from normalcy.features.backbones import create_backbone

    return create_backbone(name, weights=weights)


def load_backbone(name: str = "efficientnet_lite0", weights: str | Path | None = None):
    """A shared, frozen backbone instance (built once per process per name and weights file)."""
    return _cached_backbone(name, None if weights is None else str(Path(weights).expanduser().resolve()))


class PatchFeatureExtractor:
    """Images (B×3×S×S in [0,1]) → patch features (B×C×h×w) on the grid of the finest requested stride.

    Each stage is averaged over a `aggregate`×`aggregate` neighbourhood at its own resolution (PatchCore's
    local aggregation: a patch sees its context), coarser stages are upsampled bilinearly and concatenated.
    `project_dim` applies a fixed Gaussian random projection (Johnson-Lindenstrauss) to shrink C.
    """

    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        weights: str | Path | None = None,
        strides: Sequence[int] = (8, 16),
        aggregate: int = 3,
        project_dim: int | None = None,
        seed: int = 0,
    ) -> None:
        self.net = load_backbone(backbone, weights)
        self.strides = tuple(sorted(int(s) for s in strides))
        unknown = [s for s in self.strides if s not in self.net.stage_channels]
        if not self.strides or unknown:
            raise ParameterError(
                f"strides {tuple(strides)} not available for {backbone}; choose from {sorted(self.net.stage_channels)}"
            )
        if aggregate < 1 or aggregate % 2 == 0:
            raise ParameterError(f"aggregate must be a positive odd number, got {aggregate}")
        self.aggregate = aggregate
        raw = sum(self.net.stage_channels[s] for s in self.strides)
        self.projection = None
        if project_dim and project_dim < raw:
            gen = torch.Generator().manual_seed(seed)
            self.projection = torch.randn(raw, project_dim, generator=gen) / project_dim**0.5
        self.out_channels = project_dim if self.projection is not None else raw

    @property
    def backbone_sha256(self) -> str:
        return self.net.weights_sha256

    def grid(self, size: int | tuple[int, int]) -> tuple[int, int]:
        """Feature grid (h, w) for a square input of side `size`, or a (height, width) canvas."""
        s = self.strides[0]
        h, w = (size, size) if isinstance(size, int) else size
        return (-(-int(h) // s), -(-int(w) // s))

    def backbone_only(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The raw stage outputs (for timing the backbone alone)."""
        with torch.inference_mode():
            return self.net.forward_features(x, self.strides)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            stages = self.net.forward_features(x, self.strides)
            target = stages[0].shape[-2:]
            parts = []
            for f in stages:
                if self.aggregate > 1:  # channels-last: ~4× faster at batch 1, the same values (tests/test_speed.py)
                    pad = self.aggregate // 2
                    f = f.contiguous(memory_format=torch.channels_last)
                    f = F.avg_pool2d(F.pad(f, (pad, pad, pad, pad), mode="replicate"), self.aggregate, stride=1)
                    f = f.contiguous()  # the resize below is not bit-identical channels-last at every scale
                if f.shape[-2:] != target:
                    f = F.interpolate(f, size=target, mode="bilinear", align_corners=False)
                parts.append(f)
            feats = torch.cat(parts, dim=1)
            if self.projection is not None:
                feats = torch.einsum("bchw,cd->bdhw", feats, self.projection)
            return feats.contiguous()


def pad_cells(pad: float, image_size: int, stride: int) -> int:
    """Reflect padding around the canvas, as a fraction `pad` of the image size, in whole cells of `stride`."""
    if not 0.0 <= float(pad) < 1.0:
        raise ParameterError(f"pad must be a fraction of the image size in [0, 1), got {pad}")
    return int(round(float(pad) * int(image_size) / int(stride)))


class PaddedExtractor:
    """A patch-feature extractor run on a reflect-padded canvas, its output cropped back to the image's cells.

    With zero padding inside the CNN, cells at the image border see padding and their features are atypical; the
    reflected margin gives them image-like context (few-shot and trained detectors use it). Every other attribute
    (`backbone_only`, `backbone_sha256`, ...) is the wrapped extractor's.
    """

    def __init__(self, base: Any, cells: int, stride: int) -> None:
        self.base, self.cells, self.stride = base, int(cells), int(stride)

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """The B×3×S×S batch with its reflected margin (replicated when the margin exceeds the image)."""
        px = self.cells * self.stride
        if px == 0:
            return x
        return F.pad(x, (px,) * 4, mode="reflect" if px < min(x.shape[-2:]) else "replicate")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """B×3×S×S images → B×C×h×w patch features of the unpadded image's cells."""
        c = self.cells
        if c == 0:
            return self.base(x)
        feats = self.base(self.pad(x))
        return feats[..., c : feats.shape[-2] - c, c : feats.shape[-1] - c].contiguous()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.base, name)
