"""Perlin noise and soft masks for synthetic anomalies (DRAEM-style blobs), in plain numpy."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from normalcy.errors import ParameterError


def _fade(t: np.ndarray) -> np.ndarray:
    """Perlin's quintic fade curve 6t^5 - 15t^4 + 10t^3 (smooth at the lattice points)."""
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def perlin_noise(shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """2-D gradient noise of `shape` with `res` lattice cells per axis; values roughly in [-1, 1]."""
    h, w = int(shape[0]), int(shape[1])
    ry, rx = int(res[0]), int(res[1])
    if h < 1 or w < 1 or ry < 1 or rx < 1:
        raise ParameterError(f"perlin_noise needs a positive shape and resolution, got {shape} and {res}")
    angles = rng.uniform(0.0, 2.0 * np.pi, (ry + 1, rx + 1))
    gy, gx = np.sin(angles), np.cos(angles)
    y = np.arange(h) * (ry / h)
    x = np.arange(w) * (rx / w)
    yi, xi = y.astype(int), x.astype(int)
    yf, xf = (y - yi)[:, None], (x - xi)[None, :]
    Y, X = yi[:, None], xi[None, :]

    def corner(dy: int, dx: int) -> np.ndarray:
        return gy[Y + dy, X + dx] * (yf - dy) + gx[Y + dy, X + dx] * (xf - dx)

    u, v = _fade(xf), _fade(yf)
    top = corner(0, 0) * (1 - u) + corner(0, 1) * u
    bottom = corner(1, 0) * (1 - u) + corner(1, 1) * u
    return (top * (1 - v) + bottom * v) * np.sqrt(2.0)


def perlin_mask(shape: tuple[int, int], area: float, rng: np.random.Generator, max_res: int = 8) -> np.ndarray:
    """Bool mask covering ~`area` of the image: Perlin noise thresholded at its (1 - area) quantile."""
    if not 0.0 < area < 1.0:
        raise ParameterError(f"perlin_mask area must be in (0, 1), got {area}")
    h, w = shape
    res = (int(rng.integers(1, max_res + 1)), int(rng.integers(1, max_res + 1)))
    noise = perlin_noise((h, w), res, rng)
    if rng.random() < 0.5:  # DRAEM rotates the noise; a transpose + flip keeps it cheap and exact
        noise = perlin_noise((w, h), res, rng).T[::-1]
    mask = noise > np.quantile(noise, 1.0 - area)
    if not mask.any():
        mask[noise.argmax() // w, noise.argmax() % w] = True
    return mask


def feather(mask: np.ndarray, sigma: float, floor: float = 0.05) -> np.ndarray:
    """Soft alpha in [0, 1] from a bool mask (Gaussian-blurred edges); values below `floor` become exactly 0."""
    alpha = mask.astype(np.float32)
    if sigma > 0:
        alpha = ndimage.gaussian_filter(alpha, sigma)
        alpha = np.maximum(alpha, mask * 0.5)  # a blurred thin line must not fade away entirely
        alpha[alpha < floor] = 0.0
    return alpha
