"""Tiny inline-SVG charts for the bench report (line charts and overlaid histograms): no plotting library, no
scripts, no external files, so the report opens anywhere offline."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

import numpy as np

W, H = 360, 260  # outer size in px
L, R, T, B = 52, 12, 26, 40  # margins: room for tick labels and axis titles
PALETTE = {"normal": "#2b7bb9", "anomalous": "#d6402b", "ideal": "#999999", "threshold": "#222222"}


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        return [lo]
    return [float(v) for v in np.linspace(lo, hi, n)]


def _fmt(v: float) -> str:
    return f"{v:.3g}"


class Chart:
    """One plot area with linear axes; add lines, bars and vertical markers, then `svg()`."""

    def __init__(self, title: str, xlabel: str, ylabel: str, xlim: tuple[float, float],
                 ylim: tuple[float, float], legend_at: str = "top-left") -> None:
        self.legend_at = legend_at  # "top-left", "top-right" or "bottom-right": where the curves leave room
        self.title, self.xlabel, self.ylabel = title, xlabel, ylabel
        x0, x1 = xlim
        y0, y1 = ylim
        self.xlim = (x0, x1 if x1 > x0 else x0 + 1.0)
        self.ylim = (y0, y1 if y1 > y0 else y0 + 1.0)
        self.parts: list[str] = []
        self.legend: list[tuple[str, str]] = []

    def px(self, x: float) -> float:
        return L + (x - self.xlim[0]) / (self.xlim[1] - self.xlim[0]) * (W - L - R)

    def py(self, y: float) -> float:
        return H - B - (y - self.ylim[0]) / (self.ylim[1] - self.ylim[0]) * (H - T - B)

    def line(self, xs: Sequence[float], ys: Sequence[float], color: str, label: str = "", dash: bool = False,
             points: bool = False) -> None:
        """A polyline through (xs, ys); optional dots at each point."""
        pts = " ".join(f"{self.px(x):.1f},{self.py(y):.1f}" for x, y in zip(xs, ys))
        style = ' stroke-dasharray="4 3"' if dash else ""
        self.parts.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="2"{style}/>')
        if points:
            self.parts += [f'<circle cx="{self.px(x):.1f}" cy="{self.py(y):.1f}" r="3" fill="{color}"/>'
                           for x, y in zip(xs, ys)]
        if label:
            self.legend.append((label, color))

    def bars(self, edges: Sequence[float], heights: Sequence[float], color: str, label: str = "") -> None:
        """Histogram bars between consecutive `edges`, semi-transparent so two sets can overlap."""
        for a, b, h in zip(edges[:-1], edges[1:], heights):
            if h <= 0:
                continue
            x, y = self.px(a), self.py(h)
            self.parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(self.px(b) - x, 0.5):.1f}" '
                              f'height="{self.py(self.ylim[0]) - y:.1f}" fill="{color}" fill-opacity="0.45"/>')
        if label:
            self.legend.append((label, color))

    def vline(self, x: float, color: str, label: str) -> None:
        """A vertical dashed marker (e.g. the decision threshold), clipped to the plot."""
        if not np.isfinite(x) or not (self.xlim[0] <= x <= self.xlim[1]):
            self.legend.append((f"{label} (off scale: {_fmt(x)})", color))
            return
        self.parts.append(f'<line x1="{self.px(x):.1f}" x2="{self.px(x):.1f}" y1="{T}" y2="{H - B}" '
                          f'stroke="{color}" stroke-width="1.5" stroke-dasharray="5 3"/>')
        self.legend.append((label, color))

    def svg(self) -> str:
        """The finished chart as one `<svg>` element."""
        out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
               f'role="img" aria-label="{escape(self.title)}" font-family="sans-serif" font-size="10">',
               f'<text x="{W / 2}" y="14" text-anchor="middle" font-size="12" font-weight="bold">'
               f'{escape(self.title)}</text>',
               f'<rect x="{L}" y="{T}" width="{W - L - R}" height="{H - T - B}" fill="none" stroke="#bbb"/>']
        for v in _ticks(*self.xlim):
            out.append(f'<text x="{self.px(v):.1f}" y="{H - B + 13}" text-anchor="middle">{_fmt(v)}</text>')
        for v in _ticks(*self.ylim):
            out.append(f'<text x="{L - 4}" y="{self.py(v) + 3:.1f}" text-anchor="end">{_fmt(v)}</text>')
        out.append(f'<text x="{(L + W - R) / 2}" y="{H - 8}" text-anchor="middle">{escape(self.xlabel)}</text>')
        out.append(f'<text x="12" y="{(T + H - B) / 2}" text-anchor="middle" '
                   f'transform="rotate(-90 12 {(T + H - B) / 2})">{escape(self.ylabel)}</text>')
        out += self.parts
        n = len(self.legend)
        for i, (label, color) in enumerate(self.legend):
            y = (H - B - 8 - 13 * (n - 1 - i)) if self.legend_at == "bottom-right" else T + 12 + 13 * i
            x = L + 8 if self.legend_at == "top-left" else W - R - 8 - 6 * max(len(s) for s, _ in self.legend) - 14
            out.append(f'<rect x="{x}" y="{y - 8}" width="10" height="8" fill="{color}"/>'
                       f'<text x="{x + 14}" y="{y}">{escape(label)}</text>')
        out.append("</svg>")
        return "".join(out)
