"""`normalcy synth`: read normal images (and a few real defects), write synthetic anomalies in MVTec layout.

Output: OUT/train/good (links to the normal images not used as bases), OUT/test/good (links to every base,
untouched), OUT/test/<kind>/NNN.png, OUT/ground_truth/<kind>/NNN_mask.png, OUT/synth.csv (what each image was made
from) and, with severity levels, OUT/severity.csv (`path,severity`, paths relative to OUT).
"""

from __future__ import annotations

import csv
import os
import shutil
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from normalcy.data import list_images, read_image, read_mask
from normalcy.errors import EmptyFolderError, MissingMaskError, ParameterError, PathNotFoundError
from normalcy.synth.anomalies import KINDS, cut_paste, perlin_blend, quantize, transplant

MASK_SUFFIX = "_mask.png"


@dataclass(frozen=True)
class DefectSource:
    """One real defective image and its mask, usable for transplants."""

    image: Path
    mask: Path
    defect_type: str


@lru_cache(maxsize=64)
def read_float(path: Path) -> np.ndarray:
    """An image as float32 H×W×C in [0, 1], C = 1 when all three channels are equal (grey)."""
    rgb = read_image(path)
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
        rgb = rgb[..., :1]
    return rgb.astype(np.float32) / 255.0


def write_image(path: Path, img: np.ndarray) -> None:
    """Write a float image as 8-bit PNG (grey when it has one channel)."""
    q = quantize(img)
    Image.fromarray(q[..., 0] if q.shape[2] == 1 else q).save(path)


def write_mask(path: Path, mask: np.ndarray) -> None:
    """Write a bool mask as 0/255 PNG."""
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)


def find_defects(folder: str | Path) -> list[DefectSource]:
    """Real defects: an MVTec-layout folder (test/<type> + ground_truth/<type>) or a folder of X.png + X_mask.png."""
    root = Path(folder)
    if not root.is_dir():
        raise PathNotFoundError(f"defect folder {root} does not exist")
    if (root / "test").is_dir():
        out = []
        for tdir in sorted(p for p in (root / "test").iterdir() if p.is_dir() and p.name != "good"):
            for img in list_images(tdir):
                out.append(DefectSource(img, _mask_of(img, root / "ground_truth" / tdir.name), tdir.name))
    else:
        images = [p for p in list_images(root) if not p.stem.endswith("_mask")]
        out = [DefectSource(p, _mask_of(p, root), "defect") for p in images]
    if not out:
        raise EmptyFolderError(f"no defective images in {root} (expected test/<type>/ or X.png + X{MASK_SUFFIX})")
    return out


def _mask_of(image: Path, folder: Path) -> Path:
    """The mask `<stem>_mask.png` for a defect image, or MissingMaskError naming the expected file."""
    mask = folder / f"{image.stem}{MASK_SUFFIX}"
    if not mask.is_file():
        raise MissingMaskError(f"defect image {image} has no mask: expected {mask} (transplants need the mask)")
    return mask


def _link(src: Path, dst: Path) -> None:
    """Symlink `dst` → `src` (absolute), or copy where symlinks are not allowed; replaces an older `dst`."""
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    try:
        os.symlink(src.resolve(), dst)
    except OSError:
        shutil.copyfile(src, dst)


def _split(normals: list[Path], train_fraction: float, seed: int) -> tuple[list[Path], list[Path]]:
    """Seeded split of the normal images into (train links, synthesis bases)."""
    if not 0.0 <= train_fraction < 1.0:
        raise ParameterError(f"train_fraction must be in [0, 1), got {train_fraction}")
    order = np.random.default_rng(seed).permutation(len(normals))
    n_train = int(round(train_fraction * len(normals)))
    if n_train == len(normals):
        n_train -= 1
    return [normals[i] for i in sorted(order[:n_train])], [normals[i] for i in sorted(order[n_train:])]


def _check_kinds(kinds: tuple[str, ...], defects: list[DefectSource] | None) -> tuple[str, ...]:
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise ParameterError(f"unknown synth kind(s) {bad or kinds}; choose from {', '.join(KINDS)}")
    if "transplant" in kinds and not defects:
        raise ParameterError("kind 'transplant' needs real defects: pass --from-defects DEFECT_DIR")
    return kinds


def make_one(kind: str, base: Path, normals: list[Path], defects: list[DefectSource] | None,
             rng: np.random.Generator, severity: float | None, blend: str) -> tuple[np.ndarray, np.ndarray, str]:
    """One synthetic anomaly of `kind` on `base`; returns (image, mask, source description)."""
    img = read_float(base)
    if kind == "transplant":
        d = defects[int(rng.integers(len(defects)))]
        dimg = read_float(d.image)
        dmask = read_mask(d.mask, dimg.shape[:2])
        out, mask = transplant(img, dimg, dmask, rng, severity, blend=blend)
        return out, mask, str(d.image)
    donor_path = normals[int(rng.integers(len(normals)))] if rng.random() < 0.7 else base
    donor = read_float(donor_path)
    if donor.shape[2] != img.shape[2]:
        donor = donor.mean(axis=2, keepdims=True) if img.shape[2] == 1 else np.repeat(donor, 3, axis=2)
    fn = perlin_blend if kind == "perlin" else cut_paste
    out, mask = fn(img, donor, rng, severity)
    return out, mask, str(donor_path)


def synthesize(normal_dir: str | Path, out: str | Path, n: int = 200, defect_dir: str | Path | None = None,
               seed: int = 0, kinds: tuple[str, ...] | None = None, severity_levels: int = 0,
               train_fraction: float = 0.5, blend: str = "feather") -> dict[str, int]:
    """Write `n` synthetic anomalies (kinds in turn) and their masks under `out`; returns counts per kind."""
    normals = list_images(normal_dir) if Path(normal_dir).is_dir() else None
    if normals is None:
        raise PathNotFoundError(f"normal image folder {normal_dir} does not exist")
    if not normals:
        raise EmptyFolderError(f"no normal images in {normal_dir}")
    if n < 1 or severity_levels < 0:
        raise ParameterError(f"n must be ≥ 1 and severity_levels ≥ 0, got n={n}, severity_levels={severity_levels}")
    defects = find_defects(defect_dir) if defect_dir is not None else None
    if kinds is None:
        kinds = KINDS if defects else KINDS[:2]
    kinds = _check_kinds(tuple(kinds), defects)
    train, bases = _split(normals, train_fraction, seed)
    out = Path(out)
    for sub in ["test/good", *(f"test/{k}" for k in kinds), *(f"ground_truth/{k}" for k in kinds)]:
        (out / sub).mkdir(parents=True, exist_ok=True)
    if train:
        (out / "train" / "good").mkdir(parents=True, exist_ok=True)
        for p in train:
            _link(p, out / "train" / "good" / p.name)
    rows, sev_rows, counts = [], [], dict.fromkeys(kinds, 0)
    for i in range(n):
        kind = kinds[i % len(kinds)]
        level = (i // len(kinds)) % severity_levels + 1 if severity_levels else 0
        rng = np.random.default_rng([seed, i])
        base = bases[int(rng.integers(len(bases)))]
        sev = level / severity_levels if severity_levels else None
        img, mask, source = make_one(kind, base, normals, defects, rng, sev, blend)
        name = f"{counts[kind]:03d}"
        counts[kind] += 1
        write_image(out / "test" / kind / f"{name}.png", img)
        write_mask(out / "ground_truth" / kind / f"{name}{MASK_SUFFIX}", mask)
        rel = f"test/{kind}/{name}.png"
        rows.append({"path": rel, "kind": kind, "base": str(base), "source": source, "severity": level})
        if level:
            sev_rows.append({"path": rel, "severity": level})
    for b in bases:
        _link(b, out / "test" / "good" / b.name)
    _write_csv(out / "synth.csv", rows)
    if sev_rows:
        _write_csv(out / "severity.csv", sev_rows)
    return counts


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
