"""Per-channel standardization of patch features, fitted on normal patches only.

Backbone channels differ in scale by orders of magnitude, so an L2 nearest-neighbour distance on raw features is
decided by a few loud channels (and by the stage with more channels). Dividing each channel by its spread over the
normal patches gives every channel the same say; the statistics come from the fit set, never from test images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from normalcy.errors import ParameterError

CHUNK = 65536  # rows converted to float64 at a time
EPS = 1e-6  # floor on a channel's spread relative to the median spread (dead channels do not explode)


@dataclass(frozen=True)
class ChannelStats:
    """Mean and scale per channel (C-vectors); `apply` maps features to (x − mean) / scale."""

    mean: torch.Tensor
    scale: torch.Tensor

    @classmethod
    def fit(cls, patches: torch.Tensor) -> ChannelStats:
        """Statistics of an N×C matrix of normal patch features (N ≥ 2)."""
        if patches.ndim != 2 or patches.shape[0] < 2:
            raise ParameterError("standardization needs an N×C matrix of N ≥ 2 normal patches, "
                                 f"got shape {tuple(patches.shape)}")
        shift = patches[:CHUNK].double().mean(0)  # shifted sums: no cancellation, float64 only per chunk
        s1 = torch.zeros_like(shift)
        s2 = torch.zeros_like(shift)
        for start in range(0, patches.shape[0], CHUNK):
            d = patches[start : start + CHUNK].double() - shift
            s1 += d.sum(0)
            s2 += (d * d).sum(0)
        n = patches.shape[0]
        mean = shift + s1 / n
        std = ((s2 - s1 * s1 / n) / (n - 1)).clamp(min=0).sqrt()
        floor = max(float(std.median()) * EPS, 1e-12)
        return cls(mean.float(), std.clamp(min=floor).float())

    def apply(self, feats: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """Standardize features whose channel axis is `dim` (N×C: dim=-1; B×C×h×w: dim=1)."""
        shape = [1] * feats.ndim
        shape[dim] = -1
        return (feats - self.mean.view(shape)) / self.scale.view(shape)

    def arrays(self, prefix: str = "feature_") -> dict[str, np.ndarray]:
        """For a model file: {prefix+"mean", prefix+"scale"}."""
        return {prefix + "mean": self.mean.numpy(), prefix + "scale": self.scale.numpy()}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str = "feature_") -> ChannelStats | None:
        """Back from `arrays` (None when the model was saved without standardization)."""
        if prefix + "mean" not in arrays:
            return None
        to = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
        return cls(to(arrays[prefix + "mean"]), to(arrays[prefix + "scale"]))
