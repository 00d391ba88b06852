"""`normalcy predict`: score files and folders with a saved model and write rows that lose nothing."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from normalcy.errors import DataError
from normalcy.explain.summary import attach_all

CSV_FIELDS = ("path", "score", "p_value", "is_anomaly", "severity", "defect_area", "boxes", "status", "error",
              "overlay", "mask")


def expand_paths(inputs: Sequence[str | Path]) -> Iterator[tuple[Path, str | None]]:
    """Each input file, or every image in an input folder; a missing input yields its path and an error."""
    from normalcy.data import list_images

    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            try:
                for img in list_images(p, recursive=True):
                    yield img, None
            except DataError as exc:
                yield p, str(exc)
        elif p.exists():
            yield p, None
        else:
            yield p, f"file not found: {p}"


class ResultWriter:
    """Writes results.csv/results.jsonl rows and overlay/mask PNGs in input order; shared by local and dask runs."""

    def __init__(self, out: Path, calibration: Any, write_images: bool = True, total: int | None = None) -> None:
        from normalcy.explain.overlay import display_range

        self.out, self.write_images = Path(out), write_images
        self.vmin, self.vmax = display_range(calibration)
        self.total = total
        self.n_rows = self.n_failed = 0
        self.narrator: Any = None  # normalcy.explain.narrator.Narrator: describe each flagged image (needs overlays)

    def __enter__(self) -> ResultWriter:
        self.out.mkdir(parents=True, exist_ok=True)
        if self.write_images:
            (self.out / "overlays").mkdir(exist_ok=True)
            (self.out / "masks").mkdir(exist_ok=True)
        self._fcsv = open(self.out / "results.csv", "w", newline="")
        self._fjson = open(self.out / "results.jsonl", "w")
        self._bar = tqdm(total=self.total, desc="predict", unit="img")
        self._csv = csv.DictWriter(self._fcsv, fieldnames=CSV_FIELDS)
        self._csv.writeheader()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.close()
        self._fjson.close()
        self._fcsv.close()

    def write(self, i: int, path: Path, err: str | None, pred: Any = None) -> None:
        """Write row `i` (its overlay/mask too): an input error, or the Prediction made for `path`."""
        from normalcy.data import as_rgb_array
        from normalcy.explain.overlay import mask_image, overlay

        row: dict[str, Any]
        if err is not None:
            row = {"path": str(path), "status": "error", "error": err}
        else:
            row = pred.to_dict()
            row["path"] = str(path)
            row["boxes"] = [r["box"] for r in row.setdefault("regions", [])]  # regions: normalcy.explain.summary
            if self.write_images and pred.status == "ok" and pred.anomaly_map is not None:
                stem = f"{i:05d}_{path.stem}"
                img = as_rgb_array(path)
                ov = overlay(img, pred.anomaly_map, self.vmin, self.vmax, mask=pred.mask)
                ov.save(self.out / "overlays" / f"{stem}.png")
                if self.narrator is not None and pred.is_anomaly and pred.explanation is not None:
                    row["narrator"] = pred.explanation["narrator"] = self.narrator.narrate(img, ov, pred.explanation)
                mask_image(pred.mask).save(self.out / "masks" / f"{stem}.png")
                row["overlay"] = f"overlays/{stem}.png"
                row["mask"] = f"masks/{stem}.png"
        self.n_failed += row.get("status") == "error"
        self.n_rows += 1
        self._fjson.write(json.dumps(row) + "\n")
        self._csv.writerow({k: (json.dumps(row[k]) if k == "boxes" else row.get(k, "")) for k in CSV_FIELDS
                            if k in row} | {k: "" for k in CSV_FIELDS if k not in row})
        self._bar.update(1)


def predict_to_folder(
    model: str | Path | Any,
    inputs: Sequence[str | Path],
    out: Path,
    alpha: float | None = None,
    pixel_fpr: float | None = None,
    write_images: bool = True,
    batch: int = 32,
    gallery: Any = None,
    narrator: Any = None,
) -> tuple[int, int]:
    """Write results.csv and results.jsonl (one row per input image) plus overlay/mask PNGs; (rows, failed).

    `gallery` (a folder or a normalcy.explain.gallery.DefectGallery) names each region's nearest known defect type;
    `narrator` (normalcy.explain.narrator.Narrator) adds a chat model's description of each flagged image.
    """
    from normalcy.store import load

    det = load(model) if isinstance(model, (str, Path)) else model
    det.progress = False
    entries = list(expand_paths(inputs))
    if gallery is not None and not hasattr(gallery, "annotate"):
        from normalcy.explain.gallery import DefectGallery

        gallery = DefectGallery.from_folder(gallery, det)
    with ResultWriter(out, det.calibration_, write_images, total=len(entries)) as writer:
        writer.narrator = narrator
        for start in range(0, len(entries), batch):
            part = entries[start : start + batch]
            readable = [p for p, err in part if err is None]
            found = det.predict(readable, alpha=alpha, pixel_fpr=pixel_fpr) if readable else []
            attach_all(found, det.calibration_)
            if gallery is not None:
                gallery.annotate(det, readable, found)
            preds = iter(found)
            for i, (path, err) in enumerate(part, start=start):
                writer.write(i, path, err, None if err is not None else next(preds))
    return writer.n_rows, writer.n_failed
