"""Per-mode scoring for normal sets made of sub-populations: one position term and normalizers per normal mode.

A normal set pooled from two products (or two cell types) gives a per-position Gaussian that is a blur of both and
z-score normalizers that fit neither, so one population's normals look anomalous. Modes are found with the same
k-means and silhouette rule as group-conditional calibration (`normalcy.calibration.groups.find_modes`), on one
descriptor per image: the mean of its standardized patch features over valid cells, projected on its first
MODE_COMPONENTS principal components (fitted on the fit images). In all ~150 dimensions the many noisy ones keep the
silhouette of two clearly separate products below the 0.5 rule (magnetic_tile + kolektorsdd: 0.49, each image in
the right cluster); on 4 components it is 0.68, while each set alone stays at 0.24–0.27, one mode. Each image is
scored against the Gaussian and normalizers of its nearest mode; the nearest-neighbour bank stays shared (a patch's
nearest normal neighbour is already found within its own population).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from normalcy.calibration.groups import GroupModel, find_modes

MIN_MODE_IMAGES = 10  # fewest fit images per mode: a per-position Gaussian on fewer is mostly its ridge term
MODE_COMPONENTS = 4  # principal components of the descriptors that the modes are found on


@dataclass
class Projection:
    """Standardize descriptors, then project them on the principal components fitted on the fit images."""

    mean: np.ndarray
    scale: np.ndarray
    components: np.ndarray  # k×C

    @classmethod
    def fit(cls, descriptors: np.ndarray, n_components: int = MODE_COMPONENTS) -> Projection:
        from sklearn.decomposition import PCA

        x = np.asarray(descriptors, dtype=np.float64)
        mean, scale = x.mean(0), x.std(0)
        scale = np.where(scale > 1e-12, scale, 1.0)
        k = max(1, min(n_components, x.shape[0] - 1, x.shape[1]))
        pca = PCA(k, random_state=0).fit((x - mean) / scale)
        return cls(mean + pca.mean_ * scale, scale, pca.components_)

    def __call__(self, descriptors: np.ndarray) -> np.ndarray:
        return ((np.asarray(descriptors, dtype=np.float64) - self.mean) / self.scale) @ self.components.T


def image_descriptors(feats: torch.Tensor, valid: torch.Tensor) -> np.ndarray:
    """B×C×h×w features and B×h×w valid cells → B×C mean feature per image (the mode descriptor)."""
    w = valid[:, None].to(feats.dtype)
    return ((feats * w).sum((2, 3)) / w.sum((2, 3)).clamp(min=1.0)).double().numpy()


@dataclass
class PositionModes:
    """The mode model and, per mode, the position Gaussian (mean, precision) and the fusion normalizers."""

    groups: GroupModel  # on projected descriptors
    projection: Projection
    means: list[torch.Tensor]  # K of P×c
    precisions: list[torch.Tensor]  # K of P×c×c (separate tensors: position_distances caches a factor per tensor)
    norms: torch.Tensor  # K×4: [μ_nn, σ_nn, μ_pos, σ_pos] per mode

    @property
    def n(self) -> int:
        return len(self.means)

    def assign(self, feats: torch.Tensor, valid: torch.Tensor) -> np.ndarray:
        """Index of the nearest mode of each image (B,)."""
        names = self.groups.labels or tuple(f"mode{k}" for k in range(self.n))
        index = {name: k for k, name in enumerate(names)}
        found = self.groups.assign(self.projection(image_descriptors(feats, valid)))
        return np.array([index[g] for g in found], dtype=np.int64)

    def arrays(self) -> dict[str, np.ndarray]:
        """Arrays for the model file (prefixed `mode_`)."""
        out = {f"mode_{k}": v for k, v in self.groups.state().items()}
        out.update(mode_proj_mean=self.projection.mean, mode_proj_scale=self.projection.scale,
                   mode_proj_components=self.projection.components)
        out.update(mode_position_mean=torch.stack(self.means).numpy(),
                   mode_position_precision=torch.stack(self.precisions).numpy(), mode_fusion_norms=self.norms.numpy())
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> PositionModes | None:
        """Rebuild from `arrays()`; None for models saved without modes (they score with one pooled term)."""
        if "mode_fusion_norms" not in arrays:
            return None
        to = lambda k, t: torch.from_numpy(np.ascontiguousarray(arrays[k], dtype=t))  # noqa: E731
        groups = GroupModel.from_state({k: arrays[f"mode_{k}"] for k in ("centers", "mean", "scale")})
        projection = Projection(*(np.asarray(arrays[f"mode_proj_{k}"], dtype=np.float64)
                                  for k in ("mean", "scale", "components")))
        return cls(groups, projection, list(to("mode_position_mean", np.float32)),
                   [p.clone() for p in to("mode_position_precision", np.float32)], to("mode_fusion_norms", np.float64))


def find_image_modes(descriptors: np.ndarray, seed: int = 0) -> tuple[np.ndarray, GroupModel | None]:
    """Mode index per fit image and the mode model; (zeros, None) for one mode.

    The descriptors are already projected: their components keep their variance (not standardized again), so the
    component that separates two products is not drowned by the others."""
    labels, model = find_modes(descriptors, min_size=MIN_MODE_IMAGES, seed=seed, standardize=False)
    if model is None:
        return np.zeros(len(descriptors), dtype=np.int64), None
    names = [f"mode{k}" for k in range(len(model.centers))]
    return np.array([names.index(g) for g in labels], dtype=np.int64), model
