"""The default video detector: how fast things move in each part of the frame, calibrated on normal clips.

Each frame is turned grey and shrunk to `frame_height` rows; dense motion to the previous frame (OpenCV Farneback
optical flow, or frame differences without OpenCV: `flow.py`) is averaged over `cell`×`cell` cells; the frame's raw
score is the mean of its `top_k` fastest cells. With flow and `diff_weight` > 0, the same top-k mean of the
absolute frame difference is added: both are z-scored on the normal frames and summed with that weight. The score
is averaged over a window of `smooth` frames that reaches `lookahead` frames past the frame, so each decision waits
that many frames (`lookahead=0`: causal, the decision comes with its frame). Streaming gives the same numbers as
whole clips. The anomaly map is the blurred motion magnitude at the frame's own size.

The defaults (top_k 3, smooth 13, lookahead 8, diff_weight 0.25) were chosen without test labels, by frame AUROC
on synthetic anomalies (objects pasted into the normal training clips, crossing at an unusual speed):
`benchmarks/video_validate.py`, docs/video.md.

Subclasses (`predict.py`, `mil.py`) keep this pipeline and replace only `_cell_values`: what a frame's grid of cell
speeds scores, given a bounded per-stream state.

On UCSD Ped2 this beats the appearance (backbone patch-feature kNN) and per-position memories we tried: the
anomalies (bikes, carts, skateboards) are what moves too fast, and people move at a similar speed everywhere
(docs/video.md has the figures). The score has no trained parameters beyond the 4 z-score numbers of the flow and
difference, so every frame of the normal clips given to `fit` is a (practically) out-of-sample calibration score:
p-values and the pixel threshold come from all of them.
"""

from __future__ import annotations

import warnings
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any, Self

import numpy as np
import scipy.ndimage as ndi
import torch
import torch.nn.functional as F
from PIL import Image

from normalcy.calibration.conformal import PIXEL_FPR_GRID, Calibration, check_alpha, pixel_quantiles
from normalcy.data.video import Clip, Frame, as_clips, iter_frames
from normalcy.detectors.base import Detector, Prediction, ScoreResult
from normalcy.detectors.video.flow import MotionField, resolve_motion
from normalcy.errors import EmptyFolderError, ParameterError

CAL_MAP_EVERY = 10  # every 10th normal frame's map feeds the pixel-threshold quantiles (bounds fit memory)


class VideoMotion(Detector):
    """Per-cell motion speed from dense optical flow; frame score = mean of the fastest cells, smoothed in time."""

    name = "video"
    kind = "video"
    norm_: tuple[float, float, float, float] | None = None  # (flow mean, sd, difference mean, sd) with diff_weight
    _raw_sink: list[np.ndarray] | None = None  # collects raw (flow, difference) pairs while fitting

    def __init__(
        self,
        motion: str = "auto",
        frame_height: int = 120,
        cell: int = 10,
        top_k: int = 3,
        smooth: int = 13,
        lookahead: int = 8,
        diff_weight: float = 0.25,
        sigma: float = 2.0,
        alpha: float = 0.05,
        pixel_fpr: float = 0.001,
        seed: int = 0,
    ) -> None:
        self.motion = motion
        self.frame_height = frame_height
        self.cell = cell
        self.top_k = top_k
        self.smooth = smooth
        self.lookahead = lookahead
        self.diff_weight = diff_weight
        self.sigma = sigma
        self.alpha = alpha
        self.pixel_fpr = pixel_fpr
        self.seed = seed

    # ---- input ------------------------------------------------------------------------------------------
    def _prepare(self, X: Any) -> list[Clip]:
        return as_clips(X)

    def _check_params(self) -> None:
        for name in ("frame_height", "cell", "top_k", "smooth"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ParameterError(f"{name} must be a whole number >= 1, got {value!r}")
        if self.frame_height < 2 * self.cell:
            raise ParameterError(f"frame_height ({self.frame_height}) must be at least 2 cells of {self.cell} px")
        if not isinstance(self.lookahead, int) or not 0 <= self.lookahead < self.smooth:
            raise ParameterError(f"lookahead must be a whole number from 0 to smooth - 1 ({self.smooth - 1}), "
                                 f"got {self.lookahead!r}")
        if not isinstance(self.diff_weight, int | float) or not 0 <= self.diff_weight < float("inf"):
            raise ParameterError(f"diff_weight must be a number >= 0 (0 = flow speed only), got {self.diff_weight!r}")

    # ---- the per-frame pipeline (shared by fit, score, predict and stream) -----------------------------------
    def _grey(self, rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        size = (max(1, round(w * self.frame_height / h)), int(self.frame_height))
        return np.asarray(Image.fromarray(rgb).convert("L").resize(size, Image.Resampling.BILINEAR))

    def _new_state(self) -> Any:
        """Per-stream memory for `_cell_values` (None here: the motion score looks at one frame)."""
        return None

    def _cell_values(self, cells: torch.Tensor, state: Any) -> tuple[float, np.ndarray | None]:
        """Grid of cell speeds (gh×gw) → raw frame score, and a per-cell map (None = map the motion itself)."""
        flat = cells.flatten()
        return float(flat.topk(min(self.top_k, flat.numel())).values.mean()), None

    def _fuses(self) -> bool:
        """True when the frame difference is added to the flow score (only with optical flow: `diff_weight`)."""
        return type(self)._cell_values is VideoMotion._cell_values and self.motion_ == "flow" and self.diff_weight > 0

    def _cells(self, x: np.ndarray) -> torch.Tensor:
        m = torch.from_numpy(x)[None, None]
        return F.adaptive_avg_pool2d(m, (-(-m.shape[-2] // self.cell), -(-m.shape[-1] // self.cell)))[0, 0]

    def _combine(self, v: Any) -> float:
        """Windowed raw value → frame score: a flow-only score as is; (flow, difference) as a sum of z-scores."""
        if np.ndim(v) == 0:
            return float(v)
        if self.norm_ is None:  # while fitting: the pair waits for the normalisation
            return v
        mf, sf, md, sd = self.norm_
        return float((v[0] - mf) / sf + self.diff_weight * (v[1] - md) / sd)

    def _frame_values(self, mag: np.ndarray, shape: tuple[int, int], state: Any,
                      diff: np.ndarray | None = None) -> tuple[Any, np.ndarray]:
        """Motion magnitude (working size) → raw frame value and the anomaly map at the frame's size.

        The raw value is the score, or with `diff_weight` the pair (flow score, frame-difference score): both are
        windowed and then combined by `_combine`, which is the same as combining first (the window is a mean).
        """
        raw, cell_map = self._cell_values(self._cells(mag), state)
        if diff is not None:
            flat = self._cells(diff).flatten()
            raw = np.array([raw, float(flat.topk(min(self.top_k, flat.numel())).values.mean())])
            if self._raw_sink is not None:
                self._raw_sink.append(raw)
        if cell_map is not None:  # per-cell values back to the working size, then treated like the motion
            mag = np.asarray(Image.fromarray(cell_map.astype(np.float32), mode="F").resize(
                (mag.shape[1], mag.shape[0]), Image.Resampling.BILINEAR))
        # scipy + PIL here: the torch blur/interpolate of one small map cost ~20x more per frame (docs/video.md)
        amap = ndi.gaussian_filter(mag, float(self.sigma), mode="reflect", truncate=4.0) if self.sigma > 0 else mag
        if amap.shape != tuple(shape):
            amap = np.asarray(Image.fromarray(amap, mode="F").resize((shape[1], shape[0]), Image.Resampling.BILINEAR))
        return raw, amap

    def _scored_frames(self, frames: Iterable[Frame]) -> Iterator[tuple[Frame, float, np.ndarray | None]]:
        """(frame, smoothed score, map) per frame in order; (frame, nan, None) for a frame that cannot be scored.

        The first readable frame has no predecessor: it is scored with the motion to the next frame, so its row comes
        out one frame late. An unreadable frame restarts this (motion across a gap would look too fast). With
        `lookahead` L, a frame's row comes out L frames later (at the end of a clip or before a gap, at once).
        """
        field = MotionField(self.motion_)
        fuse = self._fuses()
        window = _Window(back=int(self.smooth) - 1 - int(self.lookahead), ahead=int(self.lookahead))
        state = self._new_state()
        prev: np.ndarray | None = None
        waiting: Frame | None = None

        def push(fr: Frame, mag: np.ndarray, diff: np.ndarray | None) -> Iterator[tuple[Frame, float, np.ndarray]]:
            raw, amap = self._frame_values(mag, fr.image.shape[:2], state, diff)
            for item, value, amap_ in window.push((fr, amap), raw):
                yield item, self._combine(value), amap_

        for fr in frames:
            if fr.image is None:
                if waiting is not None:
                    waiting.error = "no readable neighbour frame: motion needs two consecutive frames"
                    yield waiting, float("nan"), None
                yield from ((f, self._combine(v), a) for f, v, a in window.flush())
                prev, waiting, state = None, None, self._new_state()
                yield fr, float("nan"), None
                continue
            cur = self._grey(fr.image)
            if prev is None:
                prev, waiting = cur, fr
                continue
            mag = field(prev, cur)
            diff = np.abs(cur.astype(np.float32) - prev.astype(np.float32)) / 255.0 if fuse else None
            if waiting is not None:
                yield from push(waiting, mag, diff)
                waiting = None
            yield from push(fr, mag, diff)
            prev = cur
        yield from ((f, self._combine(v), a) for f, v, a in window.flush())
        if waiting is not None:
            waiting.error = "clip has one readable frame here; motion needs two consecutive frames"
            yield waiting, float("nan"), None

    def _cell_sequences(self, clips: list[Clip]) -> list[torch.Tensor]:
        """T×gh×gw cell speeds of every run of readable frames in these clips (training data)."""
        field, runs = MotionField(self.motion_), []
        for clip in clips:
            prev, seq = None, []
            for fr in iter_frames(clip):
                if fr.image is None:
                    prev = None
                    if len(seq) > 1:
                        runs.append(torch.stack(seq))
                    seq = []
                    continue
                cur = self._grey(fr.image)
                if prev is not None:
                    m = torch.from_numpy(field(prev, cur))[None, None]
                    gh, gw = -(-m.shape[-2] // self.cell), -(-m.shape[-1] // self.cell)
                    seq.append(F.adaptive_avg_pool2d(m, (gh, gw))[0, 0])
                prev = cur
            if len(seq) > 1:
                runs.append(torch.stack(seq))
        return runs

    # ---- fit ----------------------------------------------------------------------------------------------
    def fit(self, X: Any, y: Any = None) -> Self:
        """Calibrate on normal clips: every readable frame's score is a normal calibration score."""
        self._check_params()
        check_alpha(self.alpha)
        clips = self._prepare(X)
        self.motion_ = resolve_motion(self.motion)
        self._calibrate(clips)
        self.n_fit_ = len(clips)
        return self

    def _calibrate(self, clips: list[Clip]) -> None:
        """Score every readable frame of these normal clips; they become the calibration set (frames and pixels).

        With `diff_weight`, the flow and difference scores are z-scored by their mean and spread over these frames
        (4 numbers fitted on ~all normal frames, so the calibration scores stay practically out-of-sample).
        """
        scores, maps, shapes = [], [], set()
        self.norm_ = None
        self._raw_sink = [] if self._fuses() else None
        for clip in clips:
            n_ok = 0
            for _fr, s, amap in self._scored_frames(iter_frames(clip)):
                if amap is None:
                    continue
                n_ok += 1
                shapes.add(amap.shape)
                scores.append(s)
                if len(scores) % CAL_MAP_EVERY == 1:
                    maps.append(amap)
            if n_ok == 0:
                raise EmptyFolderError(f"{clip.source or clip.name}: no two readable consecutive frames to fit on; "
                                       "remove this clip or fix its frames")
        if self._raw_sink is not None:
            raw = np.asarray(self._raw_sink, dtype=np.float64)
            spread = np.maximum(raw.std(0), 1e-12)
            self.norm_ = (float(raw[:, 0].mean()), float(spread[0]), float(raw[:, 1].mean()), float(spread[1]))
            scores = [self._combine(v) for v in scores]
        self._raw_sink = None
        cal = Calibration(np.asarray(scores, dtype=np.float64), method="holdout")
        cal.pixel_fpr_levels = PIXEL_FPR_GRID.copy()
        cal.pixel_quantiles = pixel_quantiles(maps, seed=int(self.seed))
        self.calibration_ = cal
        self.n_fit_frames_ = len(scores)
        if 1.0 / (cal.n + 1) > self.alpha:
            warnings.warn(f"{type(self).__name__}: {cal.n} normal calibration frames cannot reach alpha={self.alpha}; "
                          f"give at least {int(np.ceil(1 / self.alpha)) - 1}", UserWarning, stacklevel=3)

    # ---- scoring ------------------------------------------------------------------------------------------
    def _score(self, items: list[Clip]) -> ScoreResult:
        scores, maps = [], []
        for clip in items:
            for _, s, amap in self._scored_frames(iter_frames(clip)):
                if amap is not None:
                    scores.append(s)
                    maps.append(amap)
        return ScoreResult(np.asarray(scores, dtype=np.float64), maps)

    def score(self, X: Any) -> ScoreResult:
        """Raw scores and maps of every readable frame of every clip, in order (error frames are skipped)."""
        self.check_fitted()
        return self._score(self._prepare(X))

    def iter_results(self, X: Any, alpha: float | None = None,
                     pixel_fpr: float | None = None) -> Iterator[tuple[str, Frame, Prediction]]:
        """(clip name, frame, Prediction) for every frame, errors included; the frame keeps its decoded image."""
        self.check_fitted()
        for clip in self._prepare(X):
            frames = iter_frames(clip)
            try:
                first = next(frames)
            except StopIteration:
                yield clip.name, Frame(0, ""), Prediction(
                    path=None, status="error", error=f"{clip.source or clip.name}: the clip has no frames")
                continue
            for fr, pred in self._decide_stream(_chain(first, frames), alpha, pixel_fpr):
                yield clip.name, fr, pred

    def predict_frames(self, X: Any, alpha: float | None = None,
                       pixel_fpr: float | None = None) -> Iterator[tuple[str, Prediction]]:
        """(clip name, Prediction) for every frame, errors included; `Prediction.path` is the frame's name."""
        for clip, _, pred in self.iter_results(X, alpha, pixel_fpr):
            yield clip, pred

    def stream(self, frames: Iterable[Any], alpha: float | None = None,
               pixel_fpr: float | None = None) -> Iterator[Prediction]:
        """Score a live frame iterator (arrays, paths or PIL images): one decision per frame, bounded memory.

        Holds only the previous frame, the last `smooth` scores and `lookahead` pending frames. With `lookahead` L
        (8 by default) frame t's decision comes when frame t + L arrives; pass lookahead=0 at construction for a
        decision with every frame (the first frame's then comes with the second, which its motion needs).
        """
        self.check_fitted()
        for _, pred in self._decide_stream(iter_frames(Clip("stream", iter(frames))), alpha, pixel_fpr):
            yield pred

    def _decide_stream(self, frames: Iterable[Frame], alpha: float | None,
                       pixel_fpr: float | None) -> Iterator[tuple[Frame, Prediction]]:
        for fr, s, amap in self._scored_frames(frames):
            if amap is None:
                yield fr, Prediction(path=fr.name, status="error", error=fr.error)
                continue
            pred = self.decide(ScoreResult(np.array([s]), [amap]), alpha=alpha, pixel_fpr=pixel_fpr)[0]
            pred.path = fr.name
            yield fr, pred

    def predict(self, X: Any, alpha: float | None = None, pixel_fpr: float | None = None,
                groups: Any = None) -> list[Prediction]:
        """Calibrated decisions for every frame of every clip, in order (unreadable frames are error rows)."""
        return [p for _, p in self.predict_frames(X, alpha, pixel_fpr)]

    # ---- persistence -----------------------------------------------------------------------------------------
    def _state_arrays(self) -> dict[str, np.ndarray]:
        return {}

    def _state_meta(self) -> dict[str, Any]:
        norm = None if self.norm_ is None else list(self.norm_)
        return {"motion": self.motion_, "n_fit_frames": int(self.n_fit_frames_), "norm": norm}

    def _load_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.motion_ = resolve_motion(meta["motion"])  # a flow model needs OpenCV where it is loaded too
        self.n_fit_frames_ = int(meta.get("n_fit_frames", 0))
        norm = meta.get("norm")
        self.norm_ = None if norm is None else tuple(float(x) for x in norm)
        if self.norm_ is None and self._fuses():
            self.diff_weight = 0.0  # saved before `diff_weight` existed (or without it): flow speed only, as fitted


class _Window:
    """Mean of the raw scores from `back` frames before to `ahead` frames after each item; items wait for `ahead`."""

    def __init__(self, back: int, ahead: int) -> None:
        self.ahead = ahead
        self.past: deque[float] = deque(maxlen=back)
        self.pending: deque[tuple[Any, float]] = deque()

    def _emit(self) -> tuple[Frame, float, np.ndarray]:
        (fr, amap), raw = self.pending.popleft()
        values = [*self.past, raw, *(r for _, r in self.pending)]
        if self.past.maxlen:
            self.past.append(raw)
        return fr, np.mean(values, axis=0), amap

    def push(self, item: Any, raw: float) -> Iterator[tuple[Frame, float, np.ndarray]]:
        """Add one item; yield the item that now has its `ahead` frames (if any)."""
        self.pending.append((item, raw))
        if len(self.pending) > self.ahead:
            yield self._emit()

    def flush(self) -> Iterator[tuple[Frame, float, np.ndarray]]:
        """Emit every waiting item with the frames there are (end of clip or before a gap), then start afresh."""
        while self.pending:
            yield self._emit()
        self.past.clear()


def _chain(first: Frame, rest: Iterator[Frame]) -> Iterator[Frame]:
    yield first
    yield from rest

