"""Small fully-connected autoencoder: rows that the network reconstructs badly are anomalous.

Training is seed-deterministic (its own torch generator, fixed batch order), stops early when the loss on a
held-out split of the normal rows stops improving, and never runs past `max_seconds` (a run cut by the time
budget depends on machine speed, so only runs that finish within it are reproducible bit for bit).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from normalcy.detectors.base import ScoreResult
from normalcy.detectors.training import seeded, train
from normalcy.detectors.vector.base import VectorDetector
from normalcy.detectors.vector.checks import check_choice, check_float, check_int
from normalcy.detectors.vector.scaling import SCALINGS, apply_scaling, fit_scaling


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block with n torch threads: a tiny MLP step is slower with more (sync costs, worse when busy)."""
    before = torch.get_num_threads()
    if before == n:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def build_mlp(n_features: int, hidden: tuple[int, ...], dropout: float) -> nn.Sequential:
    """Mirror-image encoder/decoder MLP: n_features -> hidden... -> reversed hidden -> n_features."""
    sizes = [n_features, *hidden, *reversed(hidden[:-1]), n_features]
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def hidden_sizes(n_features: int, hidden: tuple[int, ...] | str) -> tuple[int, ...]:
    """Resolve "auto" to (max(2d, 16), max(d // 2, 2)) clipped to 128: a real bottleneck for any width."""
    if hidden == "auto":
        return (min(max(2 * n_features, 16), 128), min(max(n_features // 2, 2), 64))
    return tuple(int(h) for h in hidden)


class AutoEncoder(VectorDetector):
    """Score = mean squared reconstruction error of the scaled row."""

    name = "autoencoder"

    def __init__(
        self,
        hidden: tuple[int, ...] | str = (64, 32),
        dropout: float = 0.2,
        epochs: int = 20,
        batch_size: int = 256,
        learning_rate: float = 1e-3,
        weight_decay: float = 1e-5,
        patience: int = 10,
        validation_fraction: float = 0.1,
        max_seconds: float = 60.0,
        scaling: str = "standard",
        alpha: float = 0.05,
        calibration_fraction: float = 0.2,
        seed: int = 0,
    ) -> None:
        self._store_params(locals())

    def _check_params(self) -> None:
        for name in ("epochs", "batch_size", "patience"):
            check_int(name, getattr(self, name))
        check_float("dropout", self.dropout, 0.0, 0.95, open_low=False)
        check_float("learning_rate", self.learning_rate)
        check_float("weight_decay", self.weight_decay, open_low=False)
        check_float("validation_fraction", self.validation_fraction, 0.0, 0.5, open_low=False)
        check_float("max_seconds", self.max_seconds)
        check_choice("scaling", self.scaling, SCALINGS)

    def _fit_rows(self, X: np.ndarray) -> None:
        self._check_params()
        self.center_, self.scale_ = fit_scaling(X, self.scaling)
        Z = torch.from_numpy(apply_scaling(X, self.center_, self.scale_).astype(np.float32))
        self.hidden_ = hidden_sizes(X.shape[1], self.hidden)
        order = torch.randperm(len(Z), generator=torch.Generator().manual_seed(int(self.seed)))
        n_val = int(round(len(Z) * float(self.validation_fraction))) if len(Z) >= 20 else 0
        val, rows = Z[order[:n_val]], Z[order[n_val:]]
        with torch_threads(1):
            with seeded(int(self.seed)):
                net = build_mlp(X.shape[1], self.hidden_, float(self.dropout))
            result = train(
                net, lambda z: ((net(z) - z) ** 2).mean(), rows, val if n_val else None, epochs=int(self.epochs),
                batch_size=int(self.batch_size), lr=float(self.learning_rate), weight_decay=float(self.weight_decay),
                schedule="constant", max_seconds=float(self.max_seconds), patience=int(self.patience),
                seed=int(self.seed), desc="autoencoder",
            )
        self.epochs_run_ = result.epochs
        self.net_ = net.eval()

    def _score(self, items: np.ndarray) -> ScoreResult:
        Z = torch.from_numpy(apply_scaling(items, self.center_, self.scale_).astype(np.float32))
        out = np.empty(len(Z))
        with torch.inference_mode(), torch_threads(1):
            for s in range(0, len(Z), 8192):
                z = Z[s : s + 8192]
                out[s : s + 8192] = ((self.net_(z) - z) ** 2).mean(dim=1).double().numpy()
        return ScoreResult(out)

    def _state_arrays(self) -> dict[str, np.ndarray]:
        arrays = {"center": self.center_, "scale": self.scale_}
        arrays.update({"net." + k: v.detach().numpy() for k, v in self.net_.state_dict().items()})
        return arrays

    def _state_meta(self) -> dict[str, Any]:
        return {**super()._state_meta(), "hidden": list(self.hidden_), "epochs_run": int(self.epochs_run_)}

    def _load_arrays(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.center_ = np.asarray(arrays["center"], dtype=np.float64)
        self.scale_ = np.asarray(arrays["scale"], dtype=np.float64)
        self.hidden_ = tuple(int(h) for h in meta["hidden"])
        self.epochs_run_ = int(meta["epochs_run"])
        net = build_mlp(self.n_features_in_, self.hidden_, float(self.dropout))
        state = {k[4:]: torch.from_numpy(np.array(v)) for k, v in arrays.items() if k.startswith("net.")}
        net.load_state_dict(state)
        self.net_ = net.eval()
