"""Synthetic anomalies on normal images: Perlin texture blends, cut-paste patches, real-defect transplants.

Every generator takes float32 H×W×C images in [0, 1] and a numpy Generator and returns (image, mask), where the
mask (bool H×W) covers every pixel that changed. `severity` in (0, 1] scales size and contrast; None draws both
at random (training data for the semi-supervised head).
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

from normalcy.errors import MaskMismatchError, ParameterError
from normalcy.synth.noise import feather, perlin_mask

KINDS = ("perlin", "cutpaste", "transplant")


def resize(img: np.ndarray, shape: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """Resize an H×W(×C) float array to `shape` (bilinear, or nearest for masks)."""
    h, w = int(shape[0]), int(shape[1])
    if img.shape[:2] == (h, w):
        return img.copy()
    mode = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    if img.ndim == 2:
        return np.asarray(Image.fromarray(img.astype(np.float32)).resize((w, h), mode))
    chans = [np.asarray(Image.fromarray(img[..., c].astype(np.float32)).resize((w, h), mode))
             for c in range(img.shape[2])]
    return np.stack(chans, axis=2)


def _level(severity: float | None, rng: np.random.Generator) -> float:
    """Severity in (0, 1]; a random one when None."""
    if severity is None:
        return float(rng.uniform(0.15, 1.0))
    if not 0.0 < severity <= 1.0:
        raise ParameterError(f"severity must be in (0, 1], got {severity}")
    return float(severity)


def jitter_colour(img: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Contrast/brightness/gamma jitter (tied across channels for grey images), stronger with `strength`."""
    mean = img.mean(axis=(0, 1), keepdims=True)
    contrast = float(np.exp(rng.choice([-1.0, 1.0]) * strength * rng.uniform(0.3, 1.0)))
    shift = rng.choice([-1.0, 1.0]) * strength * rng.uniform(0.05, 0.25)
    out = (img - mean) * contrast + mean + shift
    if img.shape[2] == 3:
        out = out + strength * rng.uniform(-0.1, 0.1, (1, 1, 3))
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _blend(base: np.ndarray, other: np.ndarray, alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """base·(1−α) + other·α; the mask is exactly the pixels that changed."""
    out = base * (1.0 - alpha[..., None]) + other * alpha[..., None]
    out = np.clip(out, 0.0, 1.0).astype(np.float32)
    changed = np.abs(quantize(out) - quantize(base)).max(axis=2) > 0
    return np.where(changed[..., None], out, base), changed


def quantize(img: np.ndarray) -> np.ndarray:
    """The uint8 image that will be written to disk."""
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def perlin_blend(base: np.ndarray, texture: np.ndarray, rng: np.random.Generator,
                 severity: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """DRAEM-style: a thresholded Perlin blob filled with a jittered foreign texture at some opacity."""
    s = _level(severity, rng)
    h, w = base.shape[:2]
    area = 0.004 + 0.06 * s ** 1.5
    region = perlin_mask((h, w), area, rng)
    tex = resize(texture, (h, w))
    if rng.random() < 0.5:
        tex = tex[::-1]
    if rng.random() < 0.5:
        tex = tex[:, ::-1]
    tex = jitter_colour(np.ascontiguousarray(tex), 0.3 + 0.7 * s, rng)
    opacity = 0.25 + 0.7 * s
    return _blend(base, tex, feather(region, 1.0) * opacity)


def _box(h: int, w: int, area: float, rng: np.random.Generator) -> tuple[int, int]:
    """A patch height/width covering ~`area` of an h×w image with a random aspect ratio."""
    aspect = float(np.exp(rng.uniform(np.log(0.3), np.log(3.3))))
    ph = int(np.clip(round(np.sqrt(area * h * w / aspect)), 2, max(2, h - 1)))
    pw = int(np.clip(round(np.sqrt(area * h * w * aspect)), 2, max(2, w - 1)))
    return ph, pw


def cut_paste(base: np.ndarray, donor: np.ndarray, rng: np.random.Generator,
              severity: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """CutPaste: a jittered rectangle from `donor` (this or another normal image) pasted elsewhere on `base`."""
    s = _level(severity, rng)
    h, w = base.shape[:2]
    donor = resize(donor, (h, w))
    ph, pw = _box(h, w, 0.004 + 0.05 * s ** 1.5, rng)
    y0, x0 = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
    patch = donor[y0 : y0 + ph, x0 : x0 + pw]
    if rng.random() < 0.5:
        patch = patch[::-1, ::-1]
    patch = jitter_colour(np.ascontiguousarray(patch), 0.2 + 0.8 * s, rng)
    y1, x1 = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
    other = base.copy()
    other[y1 : y1 + ph, x1 : x1 + pw] = patch
    alpha = np.zeros((h, w), np.float32)
    alpha[y1 : y1 + ph, x1 : x1 + pw] = 1.0
    return _blend(base, other, alpha)


def poisson_blend(base: np.ndarray, src: np.ndarray, region: np.ndarray, iters: int = 300) -> np.ndarray:
    """Seamless cloning: inside `region` solve Δf = Δsrc with f = base on its border (Jacobi iterations)."""
    out = base.astype(np.float64).copy()
    src = src.astype(np.float64)
    inside = region.copy()
    inside[[0, -1], :] = False
    inside[:, [0, -1]] = False
    if not inside.any():
        return base.copy()
    ys, xs = np.nonzero(inside)
    y0, y1, x0, x1 = ys.min() - 1, ys.max() + 2, xs.min() - 1, xs.max() + 2
    f, g, m = out[y0:y1, x0:x1], src[y0:y1, x0:x1], inside[y0:y1, x0:x1]
    lap = 4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]
    f[m] = g[m] + (f[~m].mean(axis=0) - g[~m].mean(axis=0)) if (~m).any() else g[m]  # a warm start
    core = m[1:-1, 1:-1]
    for _ in range(iters):
        nb = f[:-2, 1:-1] + f[2:, 1:-1] + f[1:-1, :-2] + f[1:-1, 2:]
        f[1:-1, 1:-1][core] = ((nb + lap) / 4.0)[core]
    out[y0:y1, x0:x1] = f
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def place_defect(defect: np.ndarray, mask: np.ndarray, shape: tuple[int, int], rng: np.random.Generator,
                 scale: float = 1.0, jitter: float = 0.1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The defect's bounding box (plus margin), rescaled to the base's size × `scale`, put on a canvas of
    `shape` near the same relative position (± `jitter` of the size); returns (canvas, defect mask, box)."""
    if mask.shape != defect.shape[:2]:
        raise MaskMismatchError(f"defect mask is {mask.shape} but its image is {defect.shape[:2]}")
    if not mask.any():
        raise ParameterError("defect mask is empty: nothing to transplant")
    h, w = shape
    dh, dw = mask.shape
    ys, xs = np.nonzero(mask)
    m = 3
    y0, y1 = max(0, ys.min() - m), min(dh, ys.max() + 1 + m)
    x0, x1 = max(0, xs.min() - m), min(dw, xs.max() + 1 + m)
    fy, fx = scale * h / dh, scale * w / dw
    ph = int(np.clip(round((y1 - y0) * fy), 1, h))
    pw = int(np.clip(round((x1 - x0) * fx), 1, w))
    patch = resize(defect[y0:y1, x0:x1], (ph, pw))
    pmask = resize(mask[y0:y1, x0:x1].astype(np.float32), (ph, pw)) > 0.5
    if not pmask.any():
        pmask = resize(mask[y0:y1, x0:x1].astype(np.float32), (ph, pw), nearest=True) > 0.5
    cy = (y0 + y1) / 2 / dh * h + rng.uniform(-jitter, jitter) * h
    cx = (x0 + x1) / 2 / dw * w + rng.uniform(-jitter, jitter) * w
    top = int(np.clip(round(cy - ph / 2), 0, h - ph))
    left = int(np.clip(round(cx - pw / 2), 0, w - pw))
    canvas = np.zeros((h, w, defect.shape[2]), np.float32)
    cmask = np.zeros((h, w), bool)
    box = np.zeros((h, w), bool)
    canvas[top : top + ph, left : left + pw] = patch
    cmask[top : top + ph, left : left + pw] = pmask
    box[top : top + ph, left : left + pw] = True
    return canvas, cmask, box


def transplant(base: np.ndarray, defect: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
               severity: float | None = None, blend: str = "feather", scale: float | None = None,
               jitter: float = 0.1, match_brightness: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """A real defect cut by its mask and blended into `base` near the same relative position.

    `blend="feather"`: alpha = blurred mask, the defect's brightness shifted to the base's around it;
    `blend="poisson"`: gradient-domain (seamless) cloning. Severity scales size (0.5–1.2×) and opacity;
    without severity the defect keeps its relative size (± 20%) and full opacity.
    """
    if blend not in ("feather", "poisson"):
        raise ParameterError(f"blend must be 'feather' or 'poisson', got {blend!r}")
    s = 1.0 if severity is None else _level(severity, rng)
    if defect.shape[2] != base.shape[2]:
        defect = defect.mean(axis=2, keepdims=True) if base.shape[2] == 1 else np.repeat(defect, 3, axis=2)
    size = scale if scale is not None else (rng.uniform(0.8, 1.2) if severity is None else 0.5 + 0.7 * s)
    canvas, region, box = place_defect(defect, mask, base.shape[:2], rng, size, jitter)
    canvas = np.where(box[..., None], canvas, base)
    ring = ndimage.binary_dilation(region, iterations=3) & ~region
    if blend == "poisson":
        area = ndimage.binary_dilation(region, iterations=2)
        src = np.where(area[..., None], canvas, base)
        return _blend(base, poisson_blend(base, src, area), area.astype(np.float32))
    if ring.any() and match_brightness:
        canvas = canvas + (base[ring].mean(axis=0) - canvas[ring].mean(axis=0))
    opacity = 1.0 if severity is None else 0.4 + 0.6 * s
    return _blend(base, np.clip(canvas, 0, 1), feather(region, 0.7) * opacity)
