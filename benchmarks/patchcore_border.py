"""Where does PatchCore's image-score maximum sit, and what do a border band / reflect padding / smoothing change?

Usage: python benchmarks/patchcore_border.py ../shared/data/magnetic_tile [N_TRAIN] [N_TEST]
Fits one 10% coreset bank per padding variant on a seeded subsample of train/good and prints image AUROC for
each image-score rule over the same maps, plus pixel AUROC / AUPRO of the (unchanged) maps.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from normalcy import metrics
from normalcy.apps.bench.images import masks_for
from normalcy.data import as_rgb_array, load_mvtec
from normalcy.detectors.image.common import erode
from normalcy.detectors.image.search import greedy_coreset, nearest_neighbors
from normalcy.features.extractor import PatchFeatureExtractor
from normalcy.features.preprocess import gaussian_blur, placement_for, prepare_batch, restore_maps

SIZE = 256


def subsample(items: list, n: int, seed: int = 0) -> list:
    """A seeded subset of `n` items in their original order (all of them when n ≥ len)."""
    if n >= len(items):
        return items
    idx = np.random.default_rng(seed).choice(len(items), n, replace=False)
    return [items[i] for i in sorted(idx)]


def features(ext: PatchFeatureExtractor, samples: list, pad_cells: int) -> torch.Tensor:
    """Patch features on a canvas reflect-padded by `pad_cells` stride-8 cells (cropped back afterwards)."""
    out = []
    for i in range(0, len(samples), 16):
        x, _ = prepare_batch([as_rgb_array(s) for s in samples[i : i + 16]], SIZE, "stretch")
        if pad_cells:
            x = F.pad(x, (pad_cells * 8,) * 4, mode="reflect")
        f = ext(x)
        if pad_cells:
            f = f[..., pad_cells:-pad_cells, pad_cells:-pad_cells]
        out.append(f.contiguous())
    return torch.cat(out)


def main(root: str, n_train: int = 200, n_test: int = 10**9) -> None:
    train, test = load_mvtec(root)
    train, test = subsample(train, n_train), subsample(test, n_test)
    labels = np.array([s.label for s in test])
    ext = PatchFeatureExtractor(strides=(8, 16), aggregate=3)
    placements = [placement_for(*as_rgb_array(s).shape[:2], SIZE, "stretch") for s in test]
    for pad in (0, 4):
        t0 = time.perf_counter()
        ftr, fte = features(ext, train, pad), features(ext, test, pad)
        c = ftr.shape[1]
        patches = ftr.permute(0, 2, 3, 1).reshape(-1, c)
        bank = patches[greedy_coreset(patches, 0.1, 64, seed=0)].contiguous()
        b, _, h, w = fte.shape
        dist, _ = nearest_neighbors(fte.permute(0, 2, 3, 1).reshape(-1, c), bank, 1, 256, bank.pow(2).sum(1))
        maps = dist[:, 0].view(b, h, w)
        inner = erode(torch.ones(b, h, w, dtype=torch.bool), 2)
        restored = restore_maps(maps, placements, SIZE, 4.0)
        pix = metrics.pixel_metrics(masks_for(test, restored), restored)
        smooth = gaussian_blur(F.interpolate(maps[:, None], size=(SIZE, SIZE), mode="bilinear")[:, 0], 4.0)
        band = SIZE // 16
        median = maps.flatten(1).median(1).values
        rules = {
            "max over all cells": maps.flatten(1).max(1).values,
            "max outside 2-cell band": maps.masked_fill(~inner, -1e9).flatten(1).max(1).values,
            "smoothed max outside band": smooth[:, band:-band, band:-band].flatten(1).max(1).values,
            "band, minus median cell": maps.masked_fill(~inner, -1e9).flatten(1).max(1).values - median,
        }
        on_edge = (~inner.flatten(1)[torch.arange(b), maps.flatten(1).argmax(1)]).float().mean().item()
        print(f"pad_cells={pad} train={len(train)} test={len(test)} pixel AUROC {pix['pixel_auroc']:.3f} "
              f"AUPRO {pix['aupro']:.3f}; max on the 2-cell edge band for {on_edge:.0%} of images "
              f"({time.perf_counter() - t0:.0f} s)")
        for name, scores in rules.items():
            print(f"  {name:28s} image AUROC {metrics.auroc(labels, scores.double().numpy()):.3f}")


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:4]))
