"""Choose the `video` detector's settings on the normal training clips only: synthetic moving objects as anomalies.

    python benchmarks/video_validate.py [--data ../shared/data/video/ucsd_ped2] [--reps 2] [--top 15]

Each normal training clip gets one pasted object (a moving blob cut from another training clip, with a soft elliptic
edge) that enters through a frame edge, crosses the scene at 2-5 px/frame (at 240 rows; Ped2's walkers move about
1.6-2 px/frame, so from the top of the normal range to 2.5x it) for 30-60 frames and fades out over its last 6. Its
frames are the anomalous ones. Motion is measured exactly as `video` does (grey, 120 rows, OpenCV Farneback, 10-px
cells). A grid of `top_k`, `diff_weight` and window (frames back, frames ahead) is scored by frame AUROC pooled over
all synthetic clips; the frame-difference z-statistics come from the other normal clips (leave one clip out). No
test clip or test label is read. The best row is printed as detector parameters.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np

FADE = 6


def _grey(img: np.ndarray, height: int) -> np.ndarray:
    from PIL import Image

    h, w = img.shape[:2]
    size = (max(1, round(w * height / h)), height)
    return np.asarray(Image.fromarray(img.clip(0, 255).astype(np.uint8)).resize(size, Image.Resampling.BILINEAR))


def _top_cells(frames: list[np.ndarray], cell: int, keep: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Per frame, the `keep` largest cell means of flow speed and of frame difference (first frame = second's)."""
    import torch
    import torch.nn.functional as F

    from normalcy.detectors.video.flow import MotionField

    field, flows, diffs = MotionField("flow"), [], []
    for prev, cur in zip(frames[:-1], frames[1:], strict=False):
        for out, x in ((flows, field(prev, cur)), (diffs, np.abs(cur.astype(np.float32) - prev) / 255.0)):
            m = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None, None]
            grid = F.adaptive_avg_pool2d(m, (-(-m.shape[-2] // cell), -(-m.shape[-1] // cell)))
            out.append(grid.flatten().sort(descending=True).values[:keep].numpy())
    return np.stack(flows[:1] + flows), np.stack(diffs[:1] + diffs)


def _moving_blob(grey: list[np.ndarray], rng: np.random.Generator, height: int, cell: int) -> tuple[np.ndarray, ...]:
    """A person-sized moving blob cut from a random frame of these full-size grey frames, with an elliptic alpha."""
    import scipy.ndimage as ndi

    from normalcy.detectors.video.flow import MotionField

    field = MotionField("flow")
    scale = grey[0].shape[0] / height
    for _ in range(200):
        t = int(rng.integers(1, len(grey)))
        mag = field(_grey(grey[t - 1], height), _grey(grey[t], height))
        lab, n = ndi.label(mag > 0.5)
        if n == 0:
            continue
        areas = ndi.sum(np.ones_like(mag), lab, range(1, n + 1))
        i = int(np.argmax(areas)) + 1
        if not 150 <= areas[i - 1] <= 900:
            continue
        sl = ndi.find_objects((lab == i).astype(int))[0]
        y0, y1 = int(sl[0].start * scale), int(sl[0].stop * scale)
        x0, x1 = int(sl[1].start * scale), int(sl[1].stop * scale)
        patch = grey[t][y0:y1, x0:x1]
        h, w = patch.shape
        yy, xx = np.mgrid[0:h, 0:w]
        r = ((yy - (h - 1) / 2) / (h / 2)) ** 2 + ((xx - (w - 1) / 2) / (w / 2)) ** 2
        return patch, np.clip((1.0 - r) / 0.3, 0, 1)
    raise RuntimeError("no moving blob found in the source clip")


def synthetic_clip(grey: list[np.ndarray], source: list[np.ndarray], rng: np.random.Generator,
                   height: int = 120, cell: int = 10) -> tuple[list[np.ndarray], np.ndarray]:
    """Working-size grey frames of `grey` with one object from `source` crossing it fast; 0/1 frame labels."""
    patch, alpha = _moving_blob(source, rng, height, cell)
    n, (H, W), (h, w) = len(grey), grey[0].shape, patch.shape
    dur = int(rng.integers(30, 61))
    t0 = int(rng.integers(5, max(6, n - dur - 5)))
    speed = float(rng.uniform(2.0, 5.0))
    edge = int(rng.integers(4))  # enters through the top, bottom, left or right edge, heading inward +-60 degrees
    ang = (np.pi / 2, -np.pi / 2, 0.0, np.pi)[edge] + rng.uniform(-np.pi / 3, np.pi / 3)
    vy, vx = speed * np.sin(ang), speed * np.cos(ang)
    y_s, x_s = ((-h + 2.0, rng.uniform(0, W - w)), (H - 2.0, rng.uniform(0, W - w)),
                (rng.uniform(0, H - h), -w + 2.0), (rng.uniform(0, H - h), W - 2.0))[edge]
    labels, out = np.zeros(n, np.int8), []
    for t in range(n):
        f = grey[t].astype(np.float32)
        if t0 <= t < t0 + dur:
            iy, ix = round(y_s + vy * (t - t0)), round(x_s + vx * (t - t0))
            ya, yb, xa, xb = max(0, iy), min(H, iy + h), max(0, ix), min(W, ix + w)
            if yb > ya + 2 and xb > xa + 2:
                a = min(1.0, (t0 + dur - t) / FADE) * alpha[ya - iy:yb - iy, xa - ix:xb - ix]
                f[ya:yb, xa:xb] = a * patch[ya - iy:yb - iy, xa - ix:xb - ix] + (1 - a) * f[ya:yb, xa:xb]
                labels[t] = 1
        out.append(_grey(f, height))
    return out, labels


def window(s: np.ndarray, back: int, ahead: int) -> np.ndarray:
    """Mean of each value with `back` values before and `ahead` after (shorter at the ends), as `video` does."""
    n, c = len(s), np.concatenate([[0.0], np.cumsum(s)])
    i = np.arange(n)
    lo, hi = np.maximum(0, i - back), np.minimum(n, i + ahead + 1)
    return (c[hi] - c[lo]) / (hi - lo)


def main(argv: list[str] | None = None) -> None:
    import cv2
    import torch
    from PIL import Image
    from sklearn.metrics import roc_auc_score

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/video/ucsd_ped2")
    ap.add_argument("--reps", type=int, default=2, help="synthetic versions of each training clip")
    ap.add_argument("--top", type=int, default=15, help="rows of the ranking to print")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    clips = sorted(p for p in (Path(args.data) / "train").iterdir() if p.is_dir())
    grey = {c.name: [np.asarray(Image.open(f).convert("L")) for f in sorted(c.glob("*.jpg"))] for c in clips}
    names = list(grey)
    normal = {c: _top_cells([_grey(g, 120) for g in grey[c]], 10) for c in names}
    synth = []
    for rep in range(args.reps):
        for i, c in enumerate(names):
            rng = np.random.default_rng(1000 * rep + i)
            src = names[(i + 1 + int(rng.integers(len(names) - 1))) % len(names)]
            frames, labels = synthetic_clip(grey[c], grey[src], rng)
            synth.append((c, *_top_cells(frames, 10), labels))
        print(f"synthetic set {rep + 1}/{args.reps} made", flush=True)
    rows = []
    for k, w in itertools.product((3, 5, 10, 20), (0.0, 0.25, 0.5, 1.0)):
        raws = []
        for c, fl, df, _ in synth:
            f = np.concatenate([normal[d][0][:, :k].mean(1) for d in names if d != c])
            d = np.concatenate([normal[d][1][:, :k].mean(1) for d in names if d != c])
            raws.append((fl[:, :k].mean(1) - f.mean()) / f.std() + w * (df[:, :k].mean(1) - d.mean()) / d.std())
        for back, ahead in itertools.product((0, 2, 4, 6, 8, 12), (0, 2, 4, 6, 8, 10, 12, 16)):
            scores = [window(r, back, ahead) for r in raws]
            labels = [s[-1] for s in synth]
            pooled = roc_auc_score(np.concatenate(labels), np.concatenate(scores))
            per = float(np.mean([roc_auc_score(y, s) for y, s in zip(labels, scores, strict=True)]))
            rows.append((pooled, per, k, w, back, ahead))
    rows.sort(reverse=True)
    print("pooled  per-clip  top_k  diff_weight  window (back, ahead)")
    for pooled, per, k, w, back, ahead in rows[: args.top]:
        print(f"{pooled:.4f}  {per:.4f}    {k:2d}     {w:.2f}        -{back}..+{ahead}")
    causal = [r for r in rows if r[5] == 0][0]
    for tag, (pooled, _, k, w, back, ahead) in (("best", rows[0]), ("best causal", causal)):
        print(f"{tag}: --param top_k={k} --param smooth={back + ahead + 1} --param lookahead={ahead} "
              f"--param diff_weight={w}  (validation pooled {pooled:.4f})")


if __name__ == "__main__":
    main()
