"""Train the zero-shot patch head on auxiliary sets (real + synthesized anomalies with masks); optionally evaluate it
on a held-out set it never saw (cross-dataset zero-shot).

The shipped head (normalcy/detectors/image/data/zeroshot_head.safetensors) is built, seeded and single-threaded, by

    python benchmarks/train_zeroshot_head.py --sets ../shared/data/magnetic_tile ../shared/data/kolektorsdd --demo \
        --intensity gain --out normalcy/detectors/image/data/zeroshot_head.safetensors

Cross-dataset figures (train without the target, test on it):

    python benchmarks/train_zeroshot_head.py --sets ../shared/data/magnetic_tile --demo \
        --eval ../shared/data/kolektorsdd --out /tmp/head_mt.safetensors

For every set (an MVTec-layout category folder): every test image with its mask (real anomalies and test normals),
`--synth` train normals each given one synthesized anomaly (Perlin blend, cut-paste, or a transplanted real defect
of the same set, in turn; normalcy.synth) and `--normals` clean train normals. `--demo` adds the built-in demo
categories (tiles, fabric), written once into the cache folder. Raw head inputs (per-image standardized features
and in-image distances) are cached per set under `--cache`, so re-training with other sets or settings costs
seconds. `--eval` prints image AUROC (the detector's image-score rule; also the other `top_fraction`/`center`
variants) and full-resolution pixel AUROC, with maps restored to each image's size exactly as the detector does
(checked on KolektorSDD: `normalcy --threads 1 bench SET --detector zeroshot --param head=HEAD_FILE` gives the same
figures). A set in both `--sets` and `--eval` is refused. `--intensity gain` gain-normalizes every image (mean grey
0.5) before the backbone, as PatchCore and the few-shot detectors do; the head file records it and the detector's
`intensity="auto"` follows it. `--wide N` (default 11) adds the cell statistics' N×N-cell means to the head inputs
(recorded as "wide" in the head file; `--wide 0` trains heads as before the sixth pass).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from normalcy import metrics
from normalcy.data import load_mvtec, read_mask
from normalcy.detectors.image.fewshot import item_hw, sample_references
from normalcy.detectors.image.zeroshot import (
    SELF_FRACTIONS,
    WIDE,
    ZeroShot,
    cell_statistics,
    raw_inputs,
    save_head,
    train_head,
)
from normalcy.features.preprocess import Placement
from normalcy.synth.anomalies import KINDS, quantize
from normalcy.synth.folders import find_defects, make_one

POS_COVER, MAX_POS, NEG_PER_IMAGE = 0.5, 256, 96  # a cell is anomalous when half covered; cells kept per image


def cover_grid(mask: np.ndarray | None, grid: tuple[int, int]) -> torch.Tensor:
    """Fraction of each feature cell covered by an image-size bool mask (the canvas stretches the whole image)."""
    if mask is None:
        return torch.zeros(grid)
    m = torch.from_numpy(mask.astype(np.float32))[None, None]
    return F.adaptive_avg_pool2d(m, grid)[0, 0]


def to_rgb(img: np.ndarray) -> np.ndarray:
    """Float H×W×C (C = 1 or 3) in [0, 1] → uint8 H×W×3."""
    q = quantize(img)
    return np.repeat(q, 3, axis=2) if q.shape[2] == 1 else q


def set_items(root: Path, n_synth: int, n_normals: int, seed: int) -> list[tuple[str, object, np.ndarray | None]]:
    """(part, image item, mask or None) for a set: its test images, synthesized anomalies and clean normals."""
    train, test = load_mvtec(root)
    items: list[tuple[str, object, np.ndarray | None]] = []
    for s in test:
        mask = read_mask(s.mask_path, None) if s.label == 1 and s.mask_path is not None else None
        items.append(("real", s, mask))
    paths = [s.path for s in train]
    n_synth = min(n_synth, int(0.75 * len(paths)))  # small sets keep a quarter of their normals clean
    chosen = sample_references(paths, min(len(paths), n_synth + n_normals), seed)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(chosen))
    bases, clean = [chosen[i] for i in order[:n_synth]], [chosen[i] for i in order[n_synth:]]
    defects = find_defects(root)
    for i, base in enumerate(bases):
        kind = KINDS[i % len(KINDS)] if defects else KINDS[i % 2]
        img, mask, _ = make_one(kind, base, paths, defects, rng, None, "feather")
        if not mask.any():
            continue
        items.append(("synth", to_rgb(img), mask))
    items += [("normal", p, None) for p in clean]
    return items


def extract(det: ZeroShot, items: list, fractions=SELF_FRACTIONS) -> list[dict]:
    """Head inputs (float16 D×h×w), valid cells and mask cover of every item."""
    out = []
    sources = [it for _, it, _ in items]
    for feats, _, valid in det.iter_features(sources, "zero-shot features"):
        x = raw_inputs(feats, valid, fractions)  # cached raw: the statistics on top are cheap to change
        for j in range(x.shape[0]):
            part, item, mask = items[len(out)]
            out.append({"part": part, "x": x[j].half(), "valid": valid[j], "label": int(mask is not None),
                        "cover": cover_grid(mask, tuple(x.shape[-2:])).half()})
    return out


TENSOR_KEYS = ("x", "valid", "cover")


def save_rows(rows: list[dict], path: Path) -> None:
    """The cache as safetensors (tensors per row) + JSON metadata (part, label): never pickle."""
    from safetensors.torch import save_file

    tensors = {f"{i}/{k}": r[k].contiguous() for i, r in enumerate(rows) for k in TENSOR_KEYS}
    save_file(tensors, str(path), metadata={"rows": json.dumps([[r["part"], r["label"]] for r in rows])})


def load_rows(path: Path) -> list[dict]:
    """Inverse of `save_rows`."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["rows"])
        return [{"part": part, "label": label, **{k: f.get_tensor(f"{i}/{k}") for k in TENSOR_KEYS}}
                for i, (part, label) in enumerate(meta)]


def cached_set(root: Path, det: ZeroShot, args: argparse.Namespace) -> list[dict]:
    """A set's head inputs from the cache, computed (and stored) when missing."""
    key = json.dumps([str(root.resolve()), det.feature_config(), args.synth, args.normals, args.seed,
                      list(SELF_FRACTIONS)] + ([args.intensity] if args.intensity else []))  # raw: the old keys
    path = Path(args.cache).expanduser() / f"{root.name}-{hashlib.sha256(key.encode()).hexdigest()[:10]}.safetensors"
    if path.is_file():
        return load_rows(path)
    t0 = time.perf_counter()
    rows = extract(det, set_items(root, args.synth, args.normals, args.seed))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_rows(rows, path)
    print(f"[zeroshot] cached {len(rows)} images of {root} in {time.perf_counter() - t0:.0f} s -> {path}", flush=True)
    return rows


def training_cells(rows: list[dict], splits: list[int], seed: int, wide: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image: its anomalous cells (≥ POS_COVER covered, at most MAX_POS) and NEG_PER_IMAGE defect-free ones."""
    gen = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for r in rows:
        x = cell_statistics(r["x"].float()[None], splits, wide=wide)[0].flatten(1).T
        cover, valid = r["cover"].float().flatten(), r["valid"].flatten()
        pos, neg = (cover >= POS_COVER) & valid, (cover == 0) & valid
        for want, sel, cap in ((1.0, pos, MAX_POS), (0.0, neg, NEG_PER_IMAGE)):
            idx = sel.nonzero()[:, 0]
            idx = idx[torch.randperm(len(idx), generator=gen)[:cap]]
            xs.append(x[idx].float())
            ys.append(torch.full((len(idx),), want))
    return torch.cat(xs), torch.cat(ys)


def evaluate(det: ZeroShot, head, rows: list[dict], root: Path, wide: int = 0) -> dict[str, float]:
    """Image AUROC (the detector's score rule, and variants) and full-resolution pixel AUROC on a set's test images.

    Maps are restored to each image's size exactly as the detector does (canvas upsampling, Gaussian blur).
    """
    _, test = load_mvtec(root)
    real = [r for r in rows if r["part"] == "real"]
    if len(real) != len(test):
        raise SystemExit(f"cache of {root} holds {len(real)} test images, the folder {len(test)}: delete the cache")
    stride = min(det.strides)
    labels, maps, masks, cell_maps, valids = [], [], [], [], []
    for r, s in zip(real, test):
        m = head.maps(cell_statistics(r["x"].float()[None], det.stage_splits(), wide=wide))
        cell_maps.append(m)
        valids.append(r["valid"][None])
        labels.append(s.label)
        h, w = item_hw(s)
        maps.append(det.restore(m, [Placement(h, w, 0, 0, m.shape[1] * stride, m.shape[2] * stride)])[0])
        masks.append(read_mask(s.mask_path, (h, w)) if s.label == 1 else np.zeros((h, w), bool))
    out = {"n": len(real), "pixel_auroc": metrics.pixel_auroc(masks, maps)}
    for top in (0.002, 0.01, 0.05):
        for center in (True, False):
            det.set_params(top_fraction=top, center=center)
            scores = [float(det.image_scores(m, v)[0]) for m, v in zip(cell_maps, valids)]
            out[f"image_auroc_top{top}{'_c' if center else ''}"] = metrics.auroc(labels, scores)
    det.set_params(top_fraction=ZeroShot().top_fraction, center=ZeroShot().center)
    scores = [float(det.image_scores(m, v)[0]) for m, v in zip(cell_maps, valids)]
    out["image_auroc"] = metrics.auroc(labels, scores)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sets", nargs="*", default=[], help="MVTec-layout category folders to train on")
    p.add_argument("--demo", action="store_true", help="also train on the built-in demo categories (tiles, fabric)")
    p.add_argument("--eval", nargs="*", default=[], help="held-out category folders to evaluate on (never trained)")
    p.add_argument("--out", default=None, help="head file to write (safetensors)")
    p.add_argument("--cache", default="~/.cache/normalcy/zeroshot", help="folder for demo data and cached head inputs")
    p.add_argument("--synth", type=int, default=150, help="train normals per set given a synthesized anomaly")
    p.add_argument("--normals", type=int, default=60, help="clean train normals per set")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--wide", type=int, default=WIDE,
                   help="also the cell statistics' means over this many cells (0: off, heads before the sixth pass)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the evaluation rows here")
    p.add_argument("--intensity", default=None, choices=["gain"],
                   help="gain-normalize every image (mean grey 0.5) before the backbone; recorded in the head file")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    det = ZeroShot(progress=False, intensity=args.intensity)
    roots = [Path(s) for s in args.sets]
    if args.demo:
        from normalcy.data.synthetic import make_demo_dataset

        demo = Path(args.cache).expanduser() / "demo"
        if not (demo / "fabric").is_dir():
            make_demo_dataset(demo, seed=args.seed)
        roots += [demo / "tiles", demo / "fabric"]
    if set(r.resolve() for r in roots) & set(Path(e).resolve() for e in args.eval):
        sys.exit("a set in --eval is also in --sets: cross-dataset figures must come from a head that never saw it")
    train_rows = [r for root in roots for r in cached_set(root, det, args)]
    x, y = training_cells(train_rows, det.stage_splits(), args.seed, args.wide)
    t0 = time.perf_counter()
    head = train_head(x, y, hidden=args.hidden, epochs=args.epochs, seed=args.seed)
    print(f"[zeroshot] head trained on {len(y)} cells ({int(y.sum())} anomalous) from {len(train_rows)} images of "
          f"{[str(r) for r in roots]} in {time.perf_counter() - t0:.0f} s", flush=True)
    if args.out:
        given = list(argv if argv is not None else sys.argv[1:])
        if "--cache" in given:  # where the cache lives does not change the head (and is machine-specific)
            i = given.index("--cache")
            del given[i : i + 2]
        meta = {"features": det.feature_config(), "fractions": list(SELF_FRACTIONS), "hidden": args.hidden,
                "trained_on": [r.name for r in roots], "command": " ".join(["python benchmarks/train_zeroshot_head.py",
                                                                          *given]),
                "cells": len(y), "anomalous_cells": int(y.sum()), "images": len(train_rows), "seed": args.seed,
                "intensity": args.intensity, "wide": args.wide}
        save_head(head, args.out, meta)
        print(f"[zeroshot] wrote {args.out}")
    rows = []
    for e in args.eval:
        res = evaluate(det, head, cached_set(Path(e), det, args), Path(e), args.wide)
        rows.append({"eval": e, "trained_on": [str(r) for r in roots], **res})
        print(f"[zeroshot] {e}: image AUROC {res['image_auroc']:.4f}, pixel AUROC {res['pixel_auroc']:.4f} "
              f"({res['n']} test images)\n{json.dumps(res)}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
