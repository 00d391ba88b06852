"""A small gallery of labelled defects: the nearest known defect type of a region, by embedding similarity.

Accepted folders: an MVTec category (test/<type>/ images, ground_truth/<type>/<stem>_mask.png masks), or
type-named subfolders of defect images with optional `<stem>_mask.png` masks beside them. An example without a
mask is represented by the detector's own top region. Similarity is the cosine between normal-relative region
embeddings (normalcy.explain.region_features); the match is the single nearest example (1-NN).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from normalcy.errors import EmptyFolderError, LayoutError, PathNotFoundError
from normalcy.explain.region_features import ImageFeatures, embed_regions, resolve_reference, scored_features

MASK_SUFFIX = "_mask"


@dataclass
class GalleryItem:
    """One labelled defect example: image path, its type and its mask file (None: use the detected region)."""

    path: Path
    defect_type: str
    mask_path: Path | None = None


def list_gallery(folder: str | Path) -> list[GalleryItem]:
    """Labelled defect examples of an MVTec category or of a folder of type-named subfolders."""
    from normalcy.data import list_images

    root = Path(folder)
    if not root.is_dir():
        raise PathNotFoundError(f"defect gallery {root} is not a folder")
    base = root / "test" if (root / "test").is_dir() else root
    gt = root / "ground_truth"
    items: list[GalleryItem] = []
    for sub in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if sub.name == "good" or sub.name == "ground_truth":
            continue
        for img in list_images(sub):
            if img.stem.endswith(MASK_SUFFIX):
                continue
            mask = next((m for m in (gt / sub.name / f"{img.stem}{MASK_SUFFIX}.png",
                                     img.with_name(f"{img.stem}{MASK_SUFFIX}{img.suffix}"),
                                     img.with_name(f"{img.stem}{MASK_SUFFIX}.png")) if m.is_file()), None)
            items.append(GalleryItem(img, sub.name, mask))
    if not items:
        raise EmptyFolderError(f"no labelled defect images in {base}: expected type-named subfolders "
                               "(e.g. crack/, scratch/) or an MVTec category with test/<type>/")
    return items


def top_region_mask(pred: Any, calibration: Any, pixel_fpr: float) -> np.ndarray:
    """The detector's most anomalous region: its mask component with the highest peak, else the peak pixel's
    component above the pixel threshold, else the peak pixel alone (for images the decision did not flag)."""
    from normalcy.explain.regions import label_regions

    amap = pred.anomaly_map
    cand = pred.mask if pred.mask is not None and pred.mask.any() else amap > calibration.pixel_threshold(pixel_fpr)
    labels, n = label_regions(cand)
    if n == 0:
        out = np.zeros(amap.shape, dtype=bool)
        out[np.unravel_index(int(np.argmax(amap)), amap.shape)] = True
        return out
    from scipy import ndimage

    peaks = ndimage.maximum(amap, labels, np.arange(1, n + 1))
    return labels == 1 + int(np.argmax(peaks))


class DefectGallery:
    """Embeddings of labelled defect examples, matched to new regions by cosine similarity."""

    def __init__(self, embeddings: np.ndarray, types: list[str], reference: str, paths: list[str]) -> None:
        self.embeddings = _unit(np.asarray(embeddings, dtype=np.float32))
        self.types = list(types)
        self.reference = reference
        self.paths = list(paths)

    @classmethod
    def from_folder(cls, folder: str | Path, detector: Any, reference: str = "auto") -> DefectGallery:
        """Embed every labelled example of `folder` with `detector`'s backbone and normal reference."""
        from normalcy.data import read_mask

        items = list_gallery(folder)
        ref = resolve_reference(detector, reference)
        pixel_fpr = float(getattr(detector, "pixel_fpr", 0.001))
        rows = []
        for item, (pred, info) in zip(items, scored_features(detector, [it.path for it in items])):
            amap = pred.anomaly_map
            if amap is None:
                raise LayoutError(f"{type(detector).__name__} gives no anomaly map; a defect gallery needs one")
            if item.mask_path is not None:
                mask = read_mask(item.mask_path, amap.shape)
            else:
                mask = top_region_mask(pred, detector.calibration_, pixel_fpr)
            if not mask.any():
                mask = top_region_mask(pred, detector.calibration_, pixel_fpr)
            rows.append(embed_regions(detector, info, [mask], ref)[0])
        return cls(np.stack(rows), [it.defect_type for it in items], ref, [str(it.path) for it in items])

    def match(self, embeddings: np.ndarray) -> list[tuple[str, float]]:
        """(nearest type, cosine similarity) for each row of `embeddings`."""
        if len(embeddings) == 0:
            return []
        sims = _unit(np.asarray(embeddings, dtype=np.float32)) @ self.embeddings.T
        best = sims.argmax(1)
        return [(self.types[j], float(sims[i, j])) for i, j in enumerate(best)]

    def explain(self, detector: Any, info: ImageFeatures, expl: dict[str, Any],
                masks: list[np.ndarray]) -> dict[str, Any]:
        """Add each region's nearest known type to a structured explanation (normalcy.explain.summary)."""
        from normalcy.explain.summary import add_nearest_types

        emb = embed_regions(detector, info, masks, self.reference)
        return add_nearest_types(expl, self.match(emb))

    def annotate(self, detector: Any, items: list[Any], preds: list[Any]) -> list[Any]:
        """Add nearest known types to the explanations of predictions with regions (one more backbone pass,
        flagged images only); returns `preds`."""
        from normalcy.explain.regions import regions_with_masks
        from normalcy.explain.summary import attach

        for p in preds:
            if p.explanation is None:
                attach(p, detector.calibration_)
        todo = [i for i, p in enumerate(preds) if p.explanation and p.explanation["regions"]]
        if not todo:
            return preds
        infos = []
        for feats, placements, valid in detector.iter_features([items[i] for i in todo], "gallery"):
            infos += [ImageFeatures(feats[j], placements[j], valid[j], detector.canvas)
                      for j in range(len(placements))]
        for i, info in zip(todo, infos):
            pred = preds[i]
            _, masks = regions_with_masks(pred.mask, pred.anomaly_map, detector.calibration_)
            self.explain(detector, info, pred.explanation, masks)
        return preds


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
