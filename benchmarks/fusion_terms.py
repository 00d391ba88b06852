"""Diagnosis of PatchCore's two fused terms (issue 15, docs/design.md "Fifth pass: cross-fitted normalizers").

For each variant fitted on one MVTec-layout category: the fusion normalizers the model measured at fit time, the same
statistics of both terms on the test set's normal images scored by the final model ("test-normal"), and the image
AUROC with either set of normalizers and with each term alone. Test labels are used to report only, never to choose.

Usage:
  python benchmarks/fusion_terms.py <category> [--seed 0] [--variants default,refit,crossfit,bank-only,gauss-only]
The demo's fabric set is what `robustness_image.py --parts demo --cache DIR` writes (`DIR/default/data/fabric`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from normalcy import metrics
from normalcy.data import load_mvtec
from normalcy.detectors.image.patchcore import PatchCore, fusion_stats

sys.path.insert(0, str(Path(__file__).parent))
from ablate_image import AllBankOnlyPatchCore, AllGaussianOnlyPatchCore  # noqa: E402

VARIANTS = {"default": (PatchCore, {}), "refit": (PatchCore, {"refit_holdout": True}),
            "crossfit": (PatchCore, {"crossfit": True}), "bank-only": (AllBankOnlyPatchCore, {}),
            "gauss-only": (AllGaussianOnlyPatchCore, {}), "lw": (PatchCore, {"position_shrinkage": "identity"}),
            "refit+lw": (PatchCore, {"refit_holdout": True, "position_shrinkage": "identity"}),
            # the plain (unshrunk) Gaussian: the default before the sixth pass, the fifth pass's "default" / "refit"
            "nolw": (PatchCore, {"position_shrinkage": None}),
            "refit+nolw": (PatchCore, {"refit_holdout": True, "position_shrinkage": None})}
NN_ALONE = (0.0, 1.0, 0.0, 1e30)  # normalizers that silence the position term
POSITION_ALONE = (0.0, 1e30, 0.0, 1.0)  # ... and the NN term


def auroc_with(det: PatchCore, norms: torch.Tensor, cached: list, labels: np.ndarray) -> float:
    """Image AUROC of the fitted detector when its fusion uses these normalizers [μ_nn, σ_nn, μ_pos, σ_pos]."""
    det._fusion = torch.as_tensor(norms, dtype=torch.float64)
    return metrics.auroc(labels, det.score(cached).scores)


def describe(norms: torch.Tensor) -> str:
    """The four normalizers on one line."""
    mu_nn, sd_nn, mu_pos, sd_pos = norms.tolist()
    return f"mu_nn {mu_nn:.3f} sd_nn {sd_nn:.3f} mu_pos {mu_pos:.3f} sd_pos {sd_pos:.3f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", help="an MVTec-layout category folder")
    ap.add_argument("--seed", type=int, default=0, help="the detector's seed")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {', '.join(VARIANTS)}")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    train, test = load_mvtec(args.root)
    labels = np.array([s.label for s in test])
    cached = None
    for name in args.variants.split(","):
        cls, params = VARIANTS[name]
        det = cls(seed=args.seed, progress=False, **params).fit(train)
        cached = cached if cached is not None else det._cache_features(test)  # features do not depend on the variant
        good = [c for c, y in zip(cached, labels) if y == 0]
        measured = det._fusion.clone()
        test_normal = fusion_stats([det._term_cells(f, v) for f, _, v in det.iter_features(good)])
        print(f"[terms] {name:10s} measured:    {describe(measured)}")
        print(f"[terms] {name:10s} test-normal: {describe(test_normal)}")
        print(f"[terms] {name:10s} AUROC measured {auroc_with(det, measured, cached, labels):.4f} "
              f"test-normal norms {auroc_with(det, test_normal, cached, labels):.4f} "
              f"NN alone {auroc_with(det, NN_ALONE, cached, labels):.4f} "
              f"position alone {auroc_with(det, POSITION_ALONE, cached, labels):.4f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
