"""Drift of a stream of normal images: conformal test martingales with a fixed false-alarm budget (pure numpy).

Each monitored statistic (anomaly score, mean brightness, sharpness) gets an online conformal p-value: the rank of
the new value among every earlier value (plus the calibration scores for the anomaly score), with random tie
breaking. While the stream stays exchangeable with what came before (no drift), these p-values are independent
and uniform on (0, 1) (Vovk et al., *Algorithmic Learning in a Random World*, ch. 7), whatever the distribution of
the statistic. A test martingale bets against uniformity: its capital grows when p-values are small too often.
By Ville's inequality the chance that it *ever* reaches 1/delta is at most delta, so an alarm at that level has a
false-alarm budget of delta over the whole (unbounded) stream; several martingales share the budget (Bonferroni).

The betting strategy is a "jumper" mixture of power betting functions eps * p**(eps - 1): a fraction `jump` of
the capital is spread evenly over the functions at every step, so the martingale recovers quickly when a drift
starts after a long quiet period instead of having to climb back from a deep low. Nothing is bet until `warmup`
values are known (the calibration scores count): with a handful of values the p-values are coarse and mostly the
random tie-break, and heavy early bets on them only add false-alarm risk, not power.
"""

from __future__ import annotations

import bisect
import math
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from normalcy.errors import ParameterError

EPSILONS = (0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0)  # power betting functions; eps=1 bets nothing (keeps capital)
DIRECTIONS = ("up", "down")


def _check_budget(budget: float) -> float:
    if not 0 < budget < 1:
        raise ParameterError(f"drift budget must be a false-alarm probability 0 < budget < 1, got {budget!r}")
    return float(budget)


class ConformalMartingale:
    """Online conformal test martingale for one statistic in one direction ("up": large values are unusual)."""

    def __init__(self, reference: Iterable[float] = (), *, direction: str = "up", jump: float = 0.01,
                 epsilons: Sequence[float] = EPSILONS, warmup: int = 50, seed: int = 0) -> None:
        if direction not in DIRECTIONS:
            raise ParameterError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        if not 0 <= jump <= 1:
            raise ParameterError(f"jump must be in [0, 1], got {jump!r}")
        eps = np.asarray(epsilons, dtype=float)
        if eps.ndim != 1 or not len(eps) or np.any(eps <= 0) or np.any(eps > 1):
            raise ParameterError(f"epsilons must be values in (0, 1], got {epsilons!r}")
        self.direction = direction
        self.jump = float(jump)
        self.warmup = int(warmup)  # no bet until the bag holds this many values (coarse p-values early on)
        self.epsilons = eps
        self.weights = np.full(len(eps), 1.0 / len(eps))  # share of the capital on each betting function
        self.log_capital = 0.0  # natural log of the martingale's value (starts at 1)
        self.bag: list[float] = sorted(float(x) for x in reference if math.isfinite(x))
        self.n_reference = len(self.bag)
        self.n = 0  # values seen after the reference
        self._rng = np.random.default_rng(seed)

    def p_value(self, x: float) -> float:
        """Smoothed conformal p-value of `x` against every value in the bag (x itself counted with a random tie)."""
        lo, hi = bisect.bisect_left(self.bag, x), bisect.bisect_right(self.bag, x)
        beyond = len(self.bag) - hi if self.direction == "up" else lo
        ties = hi - lo + 1
        return (beyond + self._rng.uniform() * ties) / (len(self.bag) + 1)

    def update(self, x: float) -> float:
        """Add one value: bet on its p-value, add it to the bag; returns the p-value."""
        x = float(x)
        if not math.isfinite(x):
            raise ParameterError(f"drift statistics must be finite numbers, got {x!r}")
        p = max(self.p_value(x), 1e-300)
        if len(self.bag) < self.warmup:  # a bet that depends only on the past keeps it a martingale
            bisect.insort(self.bag, x)
            self.n += 1
            return p
        bets = self.epsilons * p ** (self.epsilons - 1.0)
        gain = float(self.weights @ bets)
        self.log_capital += math.log(gain)
        self.weights = (1 - self.jump) * self.weights * bets / gain + self.jump / len(self.weights)
        bisect.insort(self.bag, x)
        self.n += 1
        return p

    @property
    def log10_value(self) -> float:
        """log10 of the martingale's current value (0 at the start; alarm level log10(1/budget))."""
        return self.log_capital / math.log(10)


@dataclass
class Statistic:
    """One monitored quantity with its martingales (one per direction) and their history."""

    name: str
    martingales: dict[str, ConformalMartingale]
    log10: dict[str, array] = field(default_factory=dict)  # per direction, one value per update
    p_values: array = field(default_factory=lambda: array("f"))  # p-values of the first direction

    def __post_init__(self) -> None:
        self.log10 = {d: array("f") for d in self.martingales}


class DriftMonitor:
    """Conformal martingales on the anomaly score (up) and on image brightness and sharpness (both directions).

    Feed it only images that were decided normal; `budget` is the probability of ever raising a false alarm on a
    stream without drift, shared evenly by all martingales. The score martingale starts from the calibration scores
    (drift is measured against them); brightness and sharpness start empty (against the stream's own start).
    """

    def __init__(self, calibration_scores: Iterable[float] = (), *, budget: float = 0.01, jump: float = 0.01,
                 image_statistics: bool = True, window: int = 200, seed: int = 0) -> None:
        self.budget = _check_budget(budget)
        if window < 1:
            raise ParameterError(f"drift window must be >= 1 image, got {window!r}")
        self.window = int(window)
        cal = [float(s) for s in calibration_scores]
        self.stats: dict[str, Statistic] = {
            "score": Statistic("score", {"up": ConformalMartingale(cal, direction="up", jump=jump, seed=seed)})}
        if image_statistics:
            for i, name in enumerate(("brightness", "sharpness")):
                self.stats[name] = Statistic(name, {
                    d: ConformalMartingale(direction=d, jump=jump, seed=seed + 1 + 2 * i + j)
                    for j, d in enumerate(DIRECTIONS)})
        self.n_martingales = sum(len(s.martingales) for s in self.stats.values())
        self.threshold = math.log10(self.n_martingales / self.budget)  # each martingale gets budget / n
        self.n = 0
        self.times = array("d")
        self.alarm: dict[str, Any] | None = None  # first crossing: index, time, statistic, direction

    def update(self, score: float, brightness: float | None = None, sharpness: float | None = None,
               t: float | None = None) -> bool:
        """Add one normal-decided image; returns True when the alarm is (or already was) raised."""
        values = {"score": score, "brightness": brightness, "sharpness": sharpness}
        for name, stat in self.stats.items():
            x = values[name]
            if x is None:
                raise ParameterError(f"drift monitor tracks {name}: pass it for every image "
                                     "(or build the monitor with image_statistics=False)")
            for j, (direction, mart) in enumerate(stat.martingales.items()):
                p = mart.update(x)
                if j == 0:
                    stat.p_values.append(p)
                stat.log10[direction].append(mart.log10_value)
                if self.alarm is None and mart.log10_value >= self.threshold:
                    self.alarm = {"index": self.n, "time": t, "statistic": name, "direction": direction}
        self.times.append(float("nan") if t is None else float(t))
        self.n += 1
        return self.alarm is not None

    def update_many(self, scores: Sequence[float], brightness: Sequence[float] | None = None,
                    sharpness: Sequence[float] | None = None) -> int | None:
        """Feed a whole stream; returns the index of the first alarm, or None."""
        for i, s in enumerate(scores):
            self.update(s, None if brightness is None else brightness[i], None if sharpness is None else sharpness[i])
        return None if self.alarm is None else self.alarm["index"]

    def report(self, max_points: int = 600) -> dict[str, Any]:
        """JSON-ready state: budget, alarm level, current and peak log10 values, a recent window and the series.

        Series longer than `max_points` are thinned by keeping each bucket's maximum, so no peak is hidden.
        """
        idx = thin_index(self.n, max_points)
        out: dict[str, Any] = {"n": self.n, "budget": self.budget, "n_martingales": self.n_martingales,
                               "threshold_log10": self.threshold, "alarm": self.alarm, "window": self.window,
                               "index": [int(i[-1]) for i in idx] if idx else [],
                               "time": [_finite(self.times[i[-1]]) for i in idx] if idx else [], "statistics": []}
        for stat in self.stats.values():
            p = np.frombuffer(stat.p_values, dtype=np.float32)[-self.window:]
            entry: dict[str, Any] = {"name": stat.name, "recent_n": int(len(p)),
                                     "recent_mean_p": float(p.mean()) if len(p) else None, "directions": {}}
            for direction, mart in stat.martingales.items():
                series = np.frombuffer(stat.log10[direction], dtype=np.float32)
                entry["directions"][direction] = {
                    "log10": mart.log10_value,
                    "peak_log10": float(series.max()) if len(series) else 0.0,
                    "series": [float(series[i].max()) for i in idx] if idx else []}
            out["statistics"].append(entry)
        return out


def thin_index(n: int, max_points: int) -> list[np.ndarray]:
    """Split range(n) into at most `max_points` consecutive buckets (for plotting long series)."""
    if n <= 0:
        return []
    return [b for b in np.array_split(np.arange(n), min(n, max(1, max_points))) if len(b)]


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def image_statistics(image: np.ndarray, max_side: int = 512) -> tuple[float, float]:
    """Mean brightness (0..1) and sharpness (variance of the Laplacian, 0..1 scale) of an H×W(×C) uint8 image.

    Computed on the grey image subsampled to at most `max_side` pixels per side, so the cost stays small.
    """
    arr = np.asarray(image)
    if arr.ndim not in (2, 3) or min(arr.shape[:2]) < 3:
        raise ParameterError(f"image_statistics needs an H×W or H×W×C image of at least 3×3, got {arr.shape}")
    step = max(1, math.ceil(max(arr.shape[:2]) / max_side))
    g = arr[::step, ::step].astype(np.float32)  # subsample first: the cost stays that of a max_side image
    if g.ndim == 3:
        g = g[..., :3].mean(axis=2)
    g = g.astype(np.float64) / 255.0
    lap = g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1] - 4 * g[1:-1, 1:-1]
    return float(g.mean()), float(lap.var())
