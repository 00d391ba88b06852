"""The one training loop every trained detector uses (plain torch, any modality), plus its small helpers.

`train` runs seeded mini-batch epochs with Adam and a cosine learning-rate schedule, stops on an epoch count, a
wall-clock budget (`max_seconds`) or early stopping on held-out normal data, shows a progress bar with the loss,
keeps the best state on Ctrl-C, and turns a non-finite loss into a `TrainingError` after restoring the last good
state. Detectors describe *what* to learn (a module and a loss); this module decides *how* it is trained.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from normalcy.data.progress import progress_bar
from normalcy.errors import ParameterError, TrainingError

Batch = tuple[torch.Tensor, ...]
STOP_REASONS = ("epochs", "time", "early", "interrupted")


@dataclass
class TrainResult:
    """What happened during training: why it stopped, how long it took and the loss curve."""

    stopped: str = "epochs"
    epochs: int = 0
    steps: int = 0
    seconds: float = 0.0
    best_epoch: int = 0
    best_loss: float = math.inf
    history: list[tuple[float, float]] = field(default_factory=list)  # (train loss, val loss or nan) per epoch

    def to_meta(self) -> dict[str, Any]:
        """JSON-ready summary (no per-epoch curve)."""
        best = self.best_loss if math.isfinite(self.best_loss) else None
        return {"stopped": self.stopped, "epochs": self.epochs, "steps": self.steps,
                "seconds": round(self.seconds, 3), "best_epoch": self.best_epoch, "best_loss": best}


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block with torch's global RNG seeded, restoring the caller's RNG state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of a module's state dict."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class Adam:
    """Adam with coupled L2 weight decay, as torch.optim.Adam computes it, over parameter groups.

    Written out because constructing torch.optim.Adam imports torch._dynamo: 5-11 s on this project's 2-core
    machine, more than many of our whole fits.
    """

    def __init__(self, groups: list[dict[str, Any]], lr: float = 1e-3, weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.param_groups = [{"lr": lr, "weight_decay": weight_decay, **g, "params": list(g["params"])}
                             for g in groups]
        self.betas, self.eps, self.steps = betas, eps, 0
        self.state: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for g in self.param_groups:
            for p in g["params"]:
                p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """One update of every parameter that has a gradient."""
        self.steps += 1
        b1, b2 = self.betas
        c1, c2 = 1 - b1 ** self.steps, 1 - b2 ** self.steps
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                grad = p.grad + g["weight_decay"] * p if g["weight_decay"] else p.grad
                m, v = self.state.setdefault(id(p), (torch.zeros_like(p), torch.zeros_like(p)))
                m.mul_(b1).add_(grad, alpha=1 - b1)
                v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
                p.addcdiv_(m, (v / c2).sqrt_().add_(self.eps), value=-g["lr"] / c1)


def _as_batch(data: torch.Tensor | Sequence[torch.Tensor]) -> Batch:
    parts = (data,) if isinstance(data, torch.Tensor) else tuple(data)
    if not parts or any(p.shape[0] != parts[0].shape[0] for p in parts):
        raise ParameterError("training data must be tensors that share their first (item) dimension")
    return parts


def _batches(data: Batch, batch_size: int, gen: torch.Generator | None) -> Iterator[Batch]:
    n = data[0].shape[0]
    order = torch.randperm(n, generator=gen) if gen is not None else torch.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        yield tuple(p[idx] for p in data)


def train(
    model: nn.Module,
    loss_fn: Callable[..., torch.Tensor],
    data: torch.Tensor | Sequence[torch.Tensor],
    val_data: torch.Tensor | Sequence[torch.Tensor] | None = None,
    *,
    epochs: int = 10,
    batch_size: int = 32,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    schedule: str = "cosine",
    max_seconds: float | None = None,
    patience: int | None = None,
    min_delta: float = 0.0,
    grad_clip: float | None = None,
    seed: int = 0,
    progress: bool = False,
    desc: str = "train",
    param_groups: list[dict[str, Any]] | None = None,
) -> TrainResult:
    """Fit `model` by minimizing `loss_fn(*batch)` over `data`; the model ends holding its best state.

    `data` (and `val_data`) are tensors sharing the first dimension; each epoch visits them in a seeded random
    order. With `val_data`, "best" means the lowest validation loss (computed in eval mode without gradients)
    and `patience` epochs without an improvement larger than `min_delta` stop training early; without it, the
    lowest mean training loss of an epoch. The result is deterministic for a fixed `seed` and thread count
    unless `max_seconds` cuts training short. `torch.set_num_threads` is respected (never changed here).
    """
    if epochs < 1 or batch_size < 1:
        raise ParameterError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    if schedule not in ("cosine", "constant"):
        raise ParameterError(f"schedule must be 'cosine' or 'constant', got {schedule!r}")
    if max_seconds is not None and max_seconds <= 0:
        raise ParameterError(f"max_seconds must be > 0 or None, got {max_seconds}")
    train_data = _as_batch(data)
    val = _as_batch(val_data) if val_data is not None and len(_as_batch(val_data)[0]) else None
    groups = param_groups or [{"params": [p for p in model.parameters() if p.requires_grad]}]
    result = TrainResult()
    start = time.perf_counter()
    total_steps = epochs * math.ceil(train_data[0].shape[0] / batch_size)
    best_state = snapshot(model)
    stale = 0
    with seeded(seed):
        gen = torch.Generator().manual_seed(int(seed))
        opt = Adam(groups, lr=lr, weight_decay=weight_decay)
        base_lrs = [g["lr"] for g in opt.param_groups]
        bar = progress_bar(total=epochs, desc=desc, unit="epoch", disable=not progress, leave=False)
        try:
            for epoch in range(epochs):
                model.train()
                losses = []
                for batch in _batches(train_data, batch_size, gen):
                    if schedule == "cosine":
                        factor = 0.5 * (1.0 + math.cos(math.pi * result.steps / max(total_steps, 1)))
                        for g, base in zip(opt.param_groups, base_lrs):
                            g["lr"] = base * factor
                    loss = loss_fn(*batch)
                    if not torch.isfinite(loss):
                        _fail(model, best_state, result, desc, f"loss became {loss.item()}", epoch)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if grad_clip is not None:
                        norm = nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], grad_clip)
                        if not torch.isfinite(norm):
                            _fail(model, best_state, result, desc, "gradients became non-finite", epoch)
                    opt.step()
                    result.steps += 1
                    losses.append(loss.item())
                    if max_seconds is not None and time.perf_counter() - start > max_seconds:
                        result.stopped = "time"
                        break
                train_loss = float(np.mean(losses)) if losses else math.nan
                val_loss = _evaluate(model, loss_fn, val, batch_size) if val is not None else math.nan
                if val is not None and not math.isfinite(val_loss):
                    _fail(model, best_state, result, desc, f"validation loss became {val_loss}", epoch)
                result.epochs = epoch + 1
                result.history.append((train_loss, val_loss))
                current = val_loss if val is not None else train_loss
                if current < result.best_loss - min_delta:
                    result.best_loss, result.best_epoch, stale = current, epoch + 1, 0
                    best_state = snapshot(model)
                else:
                    stale += 1
                bar.set_postfix(loss=f"{train_loss:.4g}", val=f"{val_loss:.4g}", refresh=False)
                bar.update(1)
                if result.stopped == "time":
                    break
                if patience is not None and val is not None and stale >= patience:
                    result.stopped = "early"
                    break
        except KeyboardInterrupt:
            result.stopped = "interrupted"
            warnings.warn(f"{desc}: interrupted at epoch {result.epochs + 1}; keeping the best state "
                          f"(epoch {result.best_epoch})", RuntimeWarning, stacklevel=2)
        finally:
            bar.close()
    model.load_state_dict(best_state)
    model.eval()
    result.seconds = time.perf_counter() - start
    return result


def _evaluate(model: nn.Module, loss_fn: Callable[..., torch.Tensor], val: Batch, batch_size: int) -> float:
    """Mean loss over the validation data, in eval mode and without gradients (fixed order)."""
    model.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for batch in _batches(val, batch_size, None):
            k = batch[0].shape[0]
            total += loss_fn(*batch).item() * k
            n += k
    model.train()
    return total / max(n, 1)


def _fail(model: nn.Module, best: dict[str, torch.Tensor], result: TrainResult, desc: str, what: str,
          epoch: int) -> None:
    """Restore the last good state and raise a TrainingError that says so."""
    model.load_state_dict(best)
    model.eval()
    kept = f"epoch {result.best_epoch}" if result.best_epoch else "the initial weights"
    err = TrainingError(
        f"{desc}: {what} at epoch {epoch + 1} (step {result.steps + 1}); training stopped and the model keeps "
        f"the last good state ({kept}). Lower the learning rate (lr) or check the inputs for NaN/inf."
    )
    err.result = result  # type: ignore[attr-defined]
    raise err


# ---- helpers shared by the trained detectors --------------------------------------------------------------
def split_items(n: int, fraction: float, seed: int, min_train: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train, validation) index split of n items; validation is empty when too few items remain."""
    if not 0.0 <= fraction < 1.0:
        raise ParameterError(f"val_fraction must be in [0, 1), got {fraction}")
    order = np.random.default_rng(seed + 7919).permutation(n)
    n_val = int(n * fraction)
    if n - n_val < min_train:
        n_val = 0
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def module_arrays(prefix: str, module: nn.Module) -> dict[str, np.ndarray]:
    """A module's state dict as numpy arrays named `prefix.key` (for the safetensors model file)."""
    return {f"{prefix}.{k}": v.detach().cpu().numpy() for k, v in module.state_dict().items()}


def load_module(prefix: str, module: nn.Module, arrays: dict[str, np.ndarray]) -> nn.Module:
    """Load `prefix.key` arrays into `module` strictly; returns it in eval mode."""
    state = {k[len(prefix) + 1 :]: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()
             if k.startswith(prefix + ".")}
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"stored weights do not fit {prefix!r}: {exc}") from None
    return module.eval()
