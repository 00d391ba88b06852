"""`normalcy predict`: score files and folders with a saved model and write rows that lose nothing."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from normalcy.errors import DataError

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


def predict_to_folder(
    model: str | Path | Any,
    inputs: Sequence[str | Path],
    out: Path,
    alpha: float | None = None,
    pixel_fpr: float | None = None,
    write_images: bool = True,
    batch: int = 32,
) -> tuple[int, int]:
    """Write results.csv and results.jsonl (one row per input image) plus overlay/mask PNGs; (rows, failed)."""
    from normalcy.data import as_rgb_array
    from normalcy.regions import mask_regions
    from normalcy.store import load
    from normalcy.visualize import display_range, mask_image, overlay

    det = load(model) if isinstance(model, (str, Path)) else model
    det.progress = False
    out.mkdir(parents=True, exist_ok=True)
    if write_images:
        (out / "overlays").mkdir(exist_ok=True)
        (out / "masks").mkdir(exist_ok=True)
    vmin, vmax = display_range(det.calibration_)
    entries = list(expand_paths(inputs))
    n_rows = n_failed = 0
    with (open(out / "results.csv", "w", newline="") as fcsv, open(out / "results.jsonl", "w") as fjson,
          tqdm(total=len(entries), desc="predict", unit="img") as bar):
        writer = csv.DictWriter(fcsv, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for start in range(0, len(entries), batch):
            part = entries[start : start + batch]
            readable = [p for p, err in part if err is None]
            preds = iter(det.predict(readable, alpha=alpha, pixel_fpr=pixel_fpr) if readable else [])
            for i, (path, err) in enumerate(part, start=start):
                row: dict[str, Any]
                if err is not None:
                    row = {"path": str(path), "status": "error", "error": err}
                else:
                    pred = next(preds)
                    row = pred.to_dict()
                    row["path"] = str(path)
                    regions = mask_regions(pred.mask, pred.anomaly_map) if pred.mask is not None else []
                    row["boxes"] = [r["box"] for r in regions]
                    row["regions"] = regions
                    if write_images and pred.status == "ok" and pred.anomaly_map is not None:
                        stem = f"{i:05d}_{path.stem}"
                        img = as_rgb_array(path)
                        overlay(img, pred.anomaly_map, vmin, vmax, mask=pred.mask).save(
                            out / "overlays" / f"{stem}.png")
                        mask_image(pred.mask).save(out / "masks" / f"{stem}.png")
                        row["overlay"] = f"overlays/{stem}.png"
                        row["mask"] = f"masks/{stem}.png"
                n_failed += row.get("status") == "error"
                n_rows += 1
                fjson.write(json.dumps(row) + "\n")
                writer.writerow({k: (json.dumps(row[k]) if k == "boxes" else row.get(k, "")) for k in CSV_FIELDS
                                 if k in row} | {k: "" for k in CSV_FIELDS if k not in row})
                bar.update(1)
    return n_rows, n_failed
