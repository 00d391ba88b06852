"""`video-mil`: weakly supervised multiple-instance ranking on segment features (clips labelled only normal/anomalous).

Each frame becomes a short position-free motion descriptor: its `top_k` fastest cell speeds, sorted. A segment is
the mean descriptor of `segment` consecutive frames. A small head (one hidden layer, sigmoid output) is trained with
the MIL ranking loss of Sultani et al. (CVPR 2018): over pairs of an anomalous and a normal clip, the highest
segment score of the anomalous clip must beat the highest of the normal clip by a margin, with small penalties
keeping the anomalous clip's scores smooth in time and sparse. Training uses the project's one loop.

Scoring is causal and streamable: a frame's raw score is the head's score of the segment ending at that frame,
windowed like `video` (motion.py). Every `cal_every`-th normal clip is held out of training and calibrates.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Self

import numpy as np
import torch
from torch import nn

from normalcy.calibration.conformal import check_alpha
from normalcy.data.video import Clip
from normalcy.detectors.training import train
from normalcy.detectors.video.flow import resolve_motion
from normalcy.detectors.video.motion import VideoMotion
from normalcy.errors import ParameterError


class RankingHead(nn.Module):
    """Segment descriptor → anomaly score in (0, 1), never decreasing in any input (faster cells never score lower).

    Weights pass through softplus, so the head can only weigh the sorted cell speeds, not invert them: with a few
    dozen weakly labelled clips an unconstrained MLP flipped its ranking between seeds in our Ped2 runs.
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        # softplus(w) starts near 1/dim and 1/hidden: on standardized descriptors the sigmoid starts unsaturated
        self.w1 = nn.Parameter(torch.randn(hidden, dim) * 0.1 + math.log(math.expm1(1.0 / dim)))
        self.b1 = nn.Parameter(torch.zeros(hidden))
        self.w2 = nn.Parameter(torch.randn(hidden) * 0.1 + math.log(math.expm1(1.0 / hidden)))
        self.b2 = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(x @ nn.functional.softplus(self.w1).T + self.b1)
        return torch.sigmoid(h @ nn.functional.softplus(self.w2) + self.b2)


def mil_ranking_loss(head: RankingHead, anomalous: torch.Tensor, a_mask: torch.Tensor, normal: torch.Tensor,
                     n_mask: torch.Tensor, smooth: float, sparse: float) -> torch.Tensor:
    """Hinge on max anomalous vs max normal segment score, plus temporal smoothness and sparsity (B×S×d bags)."""
    sa = head(anomalous).masked_fill(~a_mask, 0.0)
    sn = head(normal).masked_fill(~n_mask, 0.0)
    hinge = torch.relu(1.0 - sa.max(1).values + sn.max(1).values)
    both = a_mask[:, 1:] & a_mask[:, :-1]
    smoothness = (((sa[:, 1:] - sa[:, :-1]) ** 2) * both).sum(1)
    return (hinge + smooth * smoothness + sparse * sa.sum(1)).mean()


class VideoMIL(VideoMotion):
    """MIL ranking head over segment motion descriptors; fit(clips, y) with y = 1 for clips containing an anomaly."""

    name = "video-mil"

    def __init__(self, motion: str = "auto", frame_height: int = 120, cell: int = 10, top_k: int = 16,
                 segment: int = 8, smooth: int = 7, lookahead: int = 0, sigma: float = 2.0, alpha: float = 0.05,
                 pixel_fpr: float = 0.001, seed: int = 0, hidden: int = 32, epochs: int = 60, cal_every: int = 4,
                 lambda_smooth: float = 8e-5, lambda_sparse: float = 8e-5, max_seconds: float = 600.0) -> None:
        super().__init__(motion=motion, frame_height=frame_height, cell=cell, top_k=top_k, smooth=smooth,
                         lookahead=lookahead, sigma=sigma, alpha=alpha, pixel_fpr=pixel_fpr, seed=seed)
        self.segment = segment
        self.hidden = hidden
        self.epochs = epochs
        self.cal_every = cal_every
        self.lambda_smooth = lambda_smooth
        self.lambda_sparse = lambda_sparse
        self.max_seconds = max_seconds

    def _check_params(self) -> None:
        super()._check_params()
        for name in ("segment", "hidden", "epochs", "cal_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ParameterError(f"{name} must be a whole number >= 1, got {value!r}")
        if self.cal_every < 2:
            raise ParameterError(f"cal_every must be >= 2 (every cal_every-th normal clip calibrates), "
                                 f"got {self.cal_every}")

    # ---- per-frame scoring ----------------------------------------------------------------------------------
    def _descriptor(self, cells: torch.Tensor) -> torch.Tensor:
        flat = cells.flatten()
        top = flat.topk(min(int(self.top_k), flat.numel())).values
        return (torch.nn.functional.pad(top, (0, int(self.top_k) - top.numel())) - self.shift_) / self.scale_

    def _new_state(self) -> deque[torch.Tensor]:
        return deque(maxlen=int(self.segment))

    def _cell_values(self, cells: torch.Tensor, state: deque[torch.Tensor]) -> tuple[float, np.ndarray | None]:
        """Head score of the segment that ends at this frame; the map is the motion itself."""
        state.append(self._descriptor(cells))
        with torch.no_grad():
            return float(self.head_(torch.stack(list(state)).mean(0))), None

    # ---- fit ----------------------------------------------------------------------------------------------
    def _bags(self, clips: list[Clip]) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded segment descriptors (clips×S×top_k) and their validity mask."""
        bags = []
        for clip in clips:
            desc = torch.cat([torch.stack([self._descriptor(c) for c in run]) for run in self._cell_sequences([clip])]
                             or [torch.zeros(0, int(self.top_k))])
            seg = [desc[i: i + int(self.segment)].mean(0) for i in range(0, len(desc), int(self.segment))]
            bags.append(torch.stack(seg) if seg else torch.zeros(0, int(self.top_k)))
        s = max(1, max(len(b) for b in bags))
        x = torch.zeros(len(bags), s, int(self.top_k))
        mask = torch.zeros(len(bags), s, dtype=torch.bool)
        for i, b in enumerate(bags):
            x[i, : len(b)], mask[i, : len(b)] = b, True
        return x, mask

    def fit(self, X: Any, y: Any = None) -> Self:
        """Train the ranking head on weakly labelled clips (y: 1 = has an anomaly); calibrate on held-out normals."""
        self._check_params()
        check_alpha(self.alpha)
        clips = self._prepare(X)
        if y is None:
            raise ParameterError("video-mil is weakly supervised: fit(clips, y) needs one label per clip "
                                 "(1 = contains an anomaly, 0 = normal); use `video` for normal clips only")
        y = np.asarray(y).astype(int).ravel()
        if len(y) != len(clips) or not set(y.tolist()) <= {0, 1} or y.min() == y.max():
            raise ParameterError(f"y must hold one 0/1 label per clip ({len(clips)} clips) with both labels present")
        self.motion_ = resolve_motion(self.motion)
        normal = [c for c, lab in zip(clips, y) if lab == 0]
        anomalous = [c for c, lab in zip(clips, y) if lab == 1]
        cal = normal[self.cal_every - 1::self.cal_every] if len(normal) >= self.cal_every else normal[-1:]
        fit_normal = [c for c in normal if all(c is not d for d in cal)] or normal
        self.shift_, self.scale_ = 0.0, 1.0
        xa, ma = self._bags(anomalous)
        xn, mn = self._bags(fit_normal)
        both = torch.cat([xa[ma], xn[mn]])  # descriptors standardized with one mean and spread over all segments
        self.shift_, self.scale_ = float(both.mean()), float(both.std().clamp_min(1e-6))
        xa, xn = (xa - self.shift_) / self.scale_, (xn - self.shift_) / self.scale_
        ia, inn = torch.meshgrid(torch.arange(len(anomalous)), torch.arange(len(fit_normal)), indexing="ij")
        self.head_ = RankingHead(int(self.top_k), int(self.hidden))

        def loss(a: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
            return mil_ranking_loss(self.head_, xa[a], ma[a], xn[n], mn[n], self.lambda_smooth, self.lambda_sparse)

        self.train_ = train(self.head_, loss, (ia.flatten(), inn.flatten()), epochs=int(self.epochs), batch_size=32,
                            lr=1e-3, weight_decay=1e-4, seed=int(self.seed), max_seconds=float(self.max_seconds),
                            desc="video-mil")
        self.head_.eval()
        self._calibrate(cal)
        self.n_fit_ = len(clips)
        self.n_train_clips_ = len(anomalous) + len(fit_normal)
        return self

    # ---- persistence ----------------------------------------------------------------------------------------
    def _state_arrays(self) -> dict[str, np.ndarray]:
        return {f"head.{k}": v.numpy() for k, v in self.head_.state_dict().items()}

    def _state_meta(self) -> dict[str, Any]:
        return super()._state_meta() | {"shift": self.shift_, "scale": self.scale_}

    def _load_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        super()._load_state(arrays, meta)
        self.shift_, self.scale_ = float(meta["shift"]), float(meta["scale"])
        self.head_ = RankingHead(int(self.top_k), int(self.hidden))
        self.head_.load_state_dict({k[5:]: torch.from_numpy(v) for k, v in arrays.items() if k.startswith("head.")})
        self.head_.eval()
