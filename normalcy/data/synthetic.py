"""Built-in demo data: procedural textured surfaces with drawn defects, written in the MVTec AD layout.

`normalcy demo` uses it, so it must be quick (vectorised numpy + scipy.ndimage, no per-pixel Python loops)
and look like inspection images. Each image draws from its own random stream, seeded by
(seed, category, split, index): the same seed gives byte-identical files, and changing one count does not
change the other images. Masks are the pixels where a defect changes the image by more than 5 % of its
contrast (0/255 PNG, same size as the image).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from normalcy.data.images import PathLike
from normalcy.errors import LayoutError, ParameterError

DEFECT_TYPES = ("scratch", "spot", "crack")
MIN_SIZE = 32
_MARKER = ".normalcy-demo.json"
_MASK_THRESHOLD = 0.05
_WORKERS = min(4, os.cpu_count() or 1)

Texture = Callable[[np.random.Generator, int], np.ndarray]
Defect = Callable[[np.random.Generator, int], np.ndarray]


# --- random fields (float32: half the memory traffic, plenty of precision for 8-bit output) -------------
def _unit(field: np.ndarray) -> np.ndarray:
    """Zero-mean, unit-std copy of a field, so amplitudes below are in image units."""
    field = field - field.mean()
    std = field.std()
    return field / std if std > 0 else field


@functools.lru_cache(maxsize=16)
def _bumps(size: int, cells: int) -> np.ndarray:
    """size x (cells + 2) weights of Gaussian bumps on a coarse grid reaching past both edges."""
    spacing = size / cells
    centres = (np.arange(-1, cells + 1) + 0.5) * spacing
    pixels = np.arange(size)[:, None] + 0.5
    weights = np.exp(-0.5 * ((pixels - centres) / (0.6 * spacing)) ** 2).astype(np.float32)
    weights.setflags(write=False)
    return weights


def _low_freq(rng: np.random.Generator, size: int, cells: int = 5) -> np.ndarray:
    """Smooth unit field varying over ~size/cells pixels (uneven lighting): separable, so nearly free."""
    bumps = _bumps(size, cells)
    coarse = rng.standard_normal((cells + 2, cells + 2), dtype=np.float32)
    # einsum (not BLAS matmul) keeps the summation order fixed, so output bytes never depend on threads.
    return _unit(np.einsum("ij,jl->il", bumps, np.einsum("jk,lk->jl", coarse, bumps)))


def _noise(rng: np.random.Generator, size: int) -> np.ndarray:
    """White Gaussian noise, size x size float32."""
    return rng.standard_normal((size, size), dtype=np.float32)


def _grain(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Fine isotropic grain: slightly blurred white noise with unit std."""
    return _unit(ndimage.gaussian_filter(_noise(rng, size), sigma, mode="wrap"))


def _streaks(rng: np.random.Generator, size: int, length: int) -> np.ndarray:
    """Horizontal brush streaks: noise smoothed along rows by two box filters (a cheap triangle kernel)."""
    field = ndimage.uniform_filter1d(_noise(rng, size), length, axis=1, mode="wrap")
    return _unit(ndimage.uniform_filter1d(field, length, axis=1, mode="wrap"))


def _lighting(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random linear light gradient in about [-0.5, 0.5] (camera light not quite centred)."""
    ramp = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    angle = rng.uniform(0, 2 * np.pi)
    return np.float32(np.sin(angle)) * ramp[:, None] + np.float32(np.cos(angle)) * ramp[None, :]


# --- textures (float32 3 x H x W, about [0, 1]; channel-first keeps numpy inner loops long) --------------
def _tiles(rng: np.random.Generator, size: int) -> np.ndarray:
    """Brushed, grainy metallic grey: horizontal brush streaks, fine grain, soft shading and gradient."""
    gray = (
        np.float32(rng.uniform(0.50, 0.58))
        + np.float32(rng.uniform(0.03, 0.07)) * _lighting(rng, size)
        + np.float32(0.03) * _low_freq(rng, size)
        + np.float32(0.035) * _streaks(rng, size, 17)
        + np.float32(0.02) * _streaks(rng, size, 5)
        + np.float32(0.018) * _grain(rng, size, 0.6)
    )
    tint = (np.array([0.97, 1.0, 1.035]) * rng.uniform(0.99, 1.01, 3)).astype(np.float32)
    return tint[:, None, None] * gray


def _weave_coords(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Thread coordinates (in periods) with a random shift, tiny rotation and smooth sub-pixel jitter."""
    period = 8.0 * rng.uniform(0.98, 1.02)
    angle = np.deg2rad(rng.uniform(-1.5, 1.5))
    shift_r, shift_c = rng.uniform(0, 2 * period, 2)
    cos, sin = np.cos(angle) / period, np.sin(angle) / period
    pixels = np.arange(size, dtype=np.float32)
    jitter = np.float32(0.6 / period)
    u = (cos * pixels[None, :] + sin * pixels[:, None] + shift_c / period).astype(np.float32)
    v = (cos * pixels[:, None] - sin * pixels[None, :] + shift_r / period).astype(np.float32)
    return u + jitter * _low_freq(rng, size, 9), v + jitter * _low_freq(rng, size, 9)


def _fabric(rng: np.random.Generator, size: int) -> np.ndarray:
    """Plain-weave cloth: warp/weft threads crossing over and under, with per-thread colour variation."""
    u, v = _weave_coords(rng, size)
    floor_u, floor_v = np.floor(u), np.floor(v)
    col, row = floor_u.astype(np.int32), floor_v.astype(np.int32)
    fu, fv = u - floor_u, v - floor_v  # stays float32 (u - int32 would promote to float64)
    bump_u, bump_v = 4 * fu * (1 - fu), 4 * fv * (1 - fv)  # thread cross-section, ~sin(pi f) but cheaper
    weft_on_top = ((col + row) & 1) == 0
    across = np.sqrt(np.where(weft_on_top, bump_v, bump_u))
    along = 0.75 + 0.25 * np.where(weft_on_top, bump_u, bump_v)
    n_threads = size // 4 + 8
    weft_var = (1 + 0.05 * rng.standard_normal(n_threads)).astype(np.float32)
    warp_var = (1 + 0.05 * rng.standard_normal(n_threads)).astype(np.float32)
    thread_var = np.where(weft_on_top, weft_var[row % n_threads], warp_var[col % n_threads])
    weft, warp = np.array([0.72, 0.66, 0.55], np.float32), np.array([0.52, 0.56, 0.62], np.float32)
    dye = rng.uniform(0.97, 1.03, 3).astype(np.float32)
    shade = (0.35 + 0.65 * across * along) * thread_var
    shade += np.float32(0.03) * _grain(rng, size, 0.5) + np.float32(0.04) * _low_freq(rng, size)
    return np.stack([np.where(weft_on_top, w, c) * shade for w, c in zip(weft * dye, warp * dye)])


_TEXTURES: dict[str, Texture] = {"tiles": _tiles, "fabric": _fabric}


# --- defect shapes (alpha maps in [0, 1]) ---------------------------------------------------------------
def _densify(points: np.ndarray, step: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Resample a polyline every `step` px (so its raster has no gaps); also return arc-length fractions."""
    arc = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(points, axis=0).T))])
    t = np.append(np.arange(0.0, arc[-1], step), arc[-1])
    dense = np.column_stack([np.interp(t, arc, points[:, 0]), np.interp(t, arc, points[:, 1])])
    return dense, t / max(arc[-1], 1e-9)


def _window(lo: np.ndarray, hi: np.ndarray, margin: int, size: int) -> tuple[slice, slice]:
    """Row and column slices of the box [lo - margin, hi + margin], clipped to the image."""
    start = np.maximum(np.floor(lo).astype(np.int64) - margin, 0)
    stop = np.minimum(np.ceil(hi).astype(np.int64) + margin + 1, size)
    return slice(int(start[0]), int(stop[0])), slice(int(start[1]), int(stop[1]))


def _render(strokes: list[tuple[np.ndarray, np.ndarray, np.ndarray]], size: int) -> np.ndarray:
    """Anti-aliased alpha of strokes given as (points (row, col), widths, strengths) per dense point."""
    rc = np.rint(np.concatenate([s[0] for s in strokes])).astype(np.int64)
    widths, strengths = np.concatenate([s[1] for s in strokes]), np.concatenate([s[2] for s in strokes])
    inside = np.all((rc >= 0) & (rc < size), axis=1)
    rc, widths, strengths = rc[inside], widths[inside], strengths[inside]
    alpha = np.zeros((size, size), np.float32)
    if not len(rc):
        return alpha
    # Distance transform only in the strokes' bounding box (plus the widest half-width): 10x cheaper.
    rows, cols = _window(rc.min(axis=0), rc.max(axis=0), int(np.ceil(widths.max() / 2)) + 2, size)
    local = rc - [rows.start, cols.start]
    shape = (rows.stop - rows.start, cols.stop - cols.start)
    background, width, strength = np.ones(shape, bool), np.zeros(shape), np.zeros(shape)
    background[local[:, 0], local[:, 1]] = False
    width[local[:, 0], local[:, 1]], strength[local[:, 0], local[:, 1]] = widths, strengths
    dist, (near_r, near_c) = ndimage.distance_transform_edt(background, return_indices=True)
    alpha[rows, cols] = np.clip(width[near_r, near_c] / 2 + 0.5 - dist, 0, 1) * strength[near_r, near_c]
    return alpha


def _scratch(rng: np.random.Generator, size: int) -> np.ndarray:
    """A thin curved line (quadratic Bezier) that fades towards its ends."""
    length = rng.uniform(0.25, 0.55) * size
    centre = rng.uniform(0.3, 0.7, 2) * size
    angle = rng.uniform(0, np.pi)
    direction, normal = np.array([np.sin(angle), np.cos(angle)]), np.array([np.cos(angle), -np.sin(angle)])
    bend = centre + normal * rng.uniform(-0.35, 0.35) * length
    t = np.linspace(0, 1, 64)[:, None]
    ends = centre - direction * length / 2, centre + direction * length / 2
    points, frac = _densify((1 - t) ** 2 * ends[0] + 2 * (1 - t) * t * bend + t**2 * ends[1])
    widths = np.full(len(frac), rng.uniform(1.0, 2.2))
    strengths = 0.35 + 0.65 * np.sin(np.pi * frac) ** 0.5
    return _render([(points, widths, strengths)], size)


def _walk(rng: np.random.Generator, start: np.ndarray, heading: float, steps: int, step: float) -> np.ndarray:
    """A jagged random walk: a slowly drifting heading plus a zig-zag per segment."""
    headings = heading + np.cumsum(rng.normal(0, 0.12, steps)) + rng.normal(0, 0.45, steps)
    lengths = step * rng.uniform(0.6, 1.4, steps)
    moves = np.column_stack([np.sin(headings), np.cos(headings)]) * lengths[:, None]
    return np.vstack([start, start + np.cumsum(moves, axis=0)])


def _crack(rng: np.random.Generator, size: int) -> np.ndarray:
    """A dark jagged line with 1-3 thinner side branches, tapering towards its tips."""
    steps = max(5, int(rng.uniform(0.3, 0.55) * size / 3.0))
    heading = rng.uniform(0, 2 * np.pi)
    trunk = _walk(rng, rng.uniform(0.25, 0.75, 2) * size, heading, steps, 3.0)
    points, frac = _densify(trunk)
    strokes = [(points, np.maximum(1.0, rng.uniform(1.8, 2.8) * (1 - 0.6 * frac)), 1 - 0.3 * frac)]
    for _ in range(rng.integers(1, 4)):
        fork = int(rng.integers(steps // 4, steps))
        turn = rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 1.1)
        branch = _walk(rng, trunk[fork], heading + turn, int(rng.integers(2, steps // 2 + 3)), 2.5)
        points, frac = _densify(branch)
        strokes.append((points, np.maximum(1.0, 1.6 * (1 - 0.5 * frac)), 0.9 - 0.3 * frac))
    return _render(strokes, size)


def _spot(rng: np.random.Generator, size: int) -> np.ndarray:
    """An irregular soft-edged blotch, about 4 to 15 px across, denser in its middle."""
    radius = rng.uniform(2.5, 7.5)
    centre = rng.uniform(0.15, 0.85, 2) * size
    rows, cols = _window(centre, centre, int(np.ceil(1.5 * radius)) + 3, size)  # wobble <= +36 %
    dr = np.arange(rows.start, rows.stop)[:, None] - centre[0]
    dc = np.arange(cols.start, cols.stop)[None, :] - centre[1]
    angle = rng.uniform(0, np.pi)
    along = dc * np.cos(angle) + dr * np.sin(angle)
    across = (dr * np.cos(angle) - dc * np.sin(angle)) / rng.uniform(0.6, 1.0)
    dist, phi = np.hypot(along, across), np.arctan2(across, along)
    harmonics = np.arange(2, 5)[:, None, None]
    amps, phases = rng.uniform(0, 0.12, (3, 1, 1)), rng.uniform(0, 2 * np.pi, (3, 1, 1))
    edge = radius * (1 + np.sum(amps * np.cos(harmonics * phi + phases), axis=0))
    blob = np.clip((edge - dist) / rng.uniform(0.8, 2.0) + 0.5, 0, 1)
    alpha = np.zeros((size, size), np.float32)
    alpha[rows, cols] = blob * (0.75 + 0.25 * np.clip(1 - dist / radius, 0, 1))
    return alpha


_SHAPES: dict[str, Defect] = {"scratch": _scratch, "spot": _spot, "crack": _crack}
_SPOT_COLOURS = np.array(
    [[0.30, 0.20, 0.10], [0.08, 0.08, 0.08], [0.92, 0.90, 0.85], [0.45, 0.40, 0.20]], np.float32
)


def _apply(img: np.ndarray, alpha: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """Paint a defect of the given kind with a random, moderate contrast (visible but not saturated)."""
    a = alpha[None]
    if kind == "scratch":
        return img + float(rng.choice([-1.0, 1.0])) * rng.uniform(0.18, 0.42) * a
    if kind == "crack":
        return img * (1 - rng.uniform(0.5, 0.8) * a)
    mix = rng.uniform(0.45, 0.8) * a
    return img * (1 - mix) + _SPOT_COLOURS[rng.integers(len(_SPOT_COLOURS)), :, None, None] * mix


def _to_uint8(img: np.ndarray) -> np.ndarray:
    """Channel-first float image in [0, 1] to H x W x 3 uint8 with rounding."""
    pixels = np.rint(np.clip(img, 0, 1) * np.float32(255)).astype(np.uint8)
    return np.ascontiguousarray(pixels.transpose(1, 2, 0))


def _defective(
    texture: Texture, kind: str, rng: np.random.Generator, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """A normal surface with one defect painted on it, and its 0/255 mask."""
    img = texture(rng, size)
    alpha = _SHAPES[kind](rng, size)  # starts inside the image, so never empty
    mask = np.where(alpha > _MASK_THRESHOLD, 255, 0).astype(np.uint8)
    return _to_uint8(_apply(img, alpha, kind, rng)), mask


# --- writing the dataset --------------------------------------------------------------------------------
def _check_count(name: str, value: object, minimum: int) -> None:
    """Raise ParameterError unless value is an int >= minimum."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ParameterError(f"make_demo_dataset: {name} must be an integer >= {minimum}, got {value!r}")


def _check_params(categories: Sequence[str], counts: dict[str, int], size: int, seed: int) -> list[str]:
    """Validate every argument up front so nothing is written for a bad call; returns the category list."""
    names = [categories] if isinstance(categories, str) else list(categories)
    unknown = [c for c in names if c not in _TEXTURES]
    if not names or unknown or len(set(names)) != len(names):
        raise ParameterError(
            f"make_demo_dataset: categories must be distinct names among {', '.join(_TEXTURES)}, "
            f"got {categories!r}"
        )
    for name, value in counts.items():
        _check_count(name, value, 1 if name == "n_train" else 0)
    _check_count("size", size, MIN_SIZE)
    _check_count("seed", seed, 0)
    return names


def _check_writable(folder: Path) -> None:
    """Refuse to overwrite a non-empty folder that make_demo_dataset did not create."""
    if folder.exists() and not folder.is_dir():
        raise LayoutError(f"{folder} is a file; make_demo_dataset needs to create a folder there")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / _MARKER).is_file():
        raise LayoutError(
            f"{folder} already exists and was not made by make_demo_dataset; refusing to overwrite it -- "
            "choose another root or remove that folder"
        )


def _reset(folder: Path, params: dict) -> None:
    """Remove a previous demo's split folders (stale files would change the counts) and mark the folder."""
    for sub in ("train", "test", "ground_truth"):
        if (folder / sub).is_dir():
            shutil.rmtree(folder / sub)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / _MARKER).write_text(json.dumps(params, sort_keys=True) + "\n")


def _save(pixels: np.ndarray, path: Path) -> None:
    """Write a uint8 array as PNG (RGB or L); level 1 is ~2x faster than the default for ~5 % more bytes."""
    Image.fromarray(pixels).save(path, format="PNG", compress_level=1)


@dataclass(frozen=True)
class _Job:
    """One image to draw and write, with its own random stream so jobs can run in any order."""

    folder: Path
    category: str
    split: str
    kind: str
    name: str
    entropy: tuple[int, ...]
    size: int


def _jobs(folder: Path, category: str, counts: dict[str, int], size: int, seed: int) -> list[_Job]:
    """Every image of one category: train/good, test/good, then test/<type> for each defect type."""
    tag = zlib.crc32(category.encode())
    digits = max(3, len(str(max(counts.values()) - 1)))
    plan = [("train/good", "", counts["n_train"]), ("test/good", "", counts["n_test_good"])]
    plan += [(f"test/{kind}", kind, counts["n_test_defect_per_type"]) for kind in DEFECT_TYPES]
    return [
        _Job(folder, category, split, kind, f"{index:0{digits}d}", (seed, tag, role, index), size)
        for role, (split, kind, count) in enumerate(plan)
        for index in range(count)
    ]


def _make_folders(jobs: list[_Job]) -> None:
    """Create every output folder once, before the parallel writers start."""
    for folder in sorted({job.folder / job.split for job in jobs}):
        folder.mkdir(parents=True, exist_ok=True)
    for folder in sorted({job.folder / "ground_truth" / job.kind for job in jobs if job.kind}):
        folder.mkdir(parents=True, exist_ok=True)


def _run(job: _Job) -> None:
    """Draw and write one image (and its mask for a defect)."""
    rng = np.random.default_rng(job.entropy)
    texture = _TEXTURES[job.category]
    if not job.kind:
        _save(_to_uint8(texture(rng, job.size)), job.folder / job.split / f"{job.name}.png")
        return
    image, mask = _defective(texture, job.kind, rng, job.size)
    _save(image, job.folder / job.split / f"{job.name}.png")
    _save(mask, job.folder / "ground_truth" / job.kind / f"{job.name}_mask.png")


def make_demo_dataset(
    root: PathLike,
    *,
    categories: Sequence[str] = ("tiles", "fabric"),
    n_train: int = 80,
    n_test_good: int = 30,
    n_test_defect_per_type: int = 15,
    size: int = 224,
    seed: int = 0,
) -> Path:
    """Write a small MVTec-layout demo set (one folder per category) under root, so demos need no download."""
    out = Path(root).expanduser().absolute()
    counts = dict(n_train=n_train, n_test_good=n_test_good, n_test_defect_per_type=n_test_defect_per_type)
    names = _check_params(categories, counts, size, seed)
    if out.exists() and not out.is_dir():
        raise LayoutError(f"{out} is a file; make_demo_dataset needs a folder to write the demo set into")
    for name in names:
        _check_writable(out / name)
    jobs: list[_Job] = []
    for name in names:
        _reset(out / name, {"category": name, "size": size, "seed": seed, **counts})
        jobs += _jobs(out / name, name, counts, size, seed)
    _make_folders(jobs)
    # numpy, scipy and zlib release the GIL for most of the work, so threads use several cores.
    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        for _ in pool.map(_run, jobs):
            pass
    return out
