"""`normalcy predict`: score files and folders with a saved model and write rows that lose nothing.

One row per input, always: every image is read once (the same pixels are scored and drawn), an input that cannot
be read is an error row (empty decision, severity "error"), rows are flushed after every batch, and SIGTERM
finishes the batch in flight, records the inputs not reached as error rows and closes both files.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import sys
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from normalcy.data.progress import progress_bar
from normalcy.errors import DataError, ParameterError
from normalcy.explain.summary import attach_all

CSV_FIELDS = ("path", "score", "p_value", "is_anomaly", "severity", "defect_area", "boxes", "status", "error",
              "overlay", "mask", "decision", "group", "calibration_note", "calibration")
PREDICT_MAX_MEGAPIXELS = 40.0  # per image in `predict` (the library reader allows 100; the service 40)
BATCH_MEGAPIXELS = 160.0  # decoded pixels held at once per batch (≈ 0.5 GB of RGB), besides the image count
STEM_CHARS = 80  # characters of the input name kept in overlay/mask file names (file systems allow 255 bytes)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_UNSAFE_NAME = re.compile(r"[^\w.-]+")
NOT_SCORED = "not scored: the run was stopped by SIGTERM before this input was reached"
MAX_PENDING_IMAGES = 64  # rows (with their image, map and mask) waiting for the background PNG writer
PNG_COMPRESS_LEVEL = 1  # zlib level of overlay/mask PNGs: 4× less CPU than PIL's 6 for ~20% larger files


def display_path(path: str | os.PathLike) -> str:
    """The path as text that any UTF-8 writer accepts: undecodable bytes of the name appear as \\xNN escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def csv_safe(value: Any) -> Any:
    """A CSV cell a spreadsheet will not run as a formula: text starting with = + - @ tab CR gets a leading '."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        try:
            float(value)
        except ValueError:
            return "'" + value
    return value


def image_stem(i: int, path: Path) -> str:
    """`00012_name`: a short, portable, unique file name for row i's overlay and mask."""
    name = _UNSAFE_NAME.sub("_", display_path(path.stem))[:STEM_CHARS]
    return f"{i:05d}_{name}"


def error_row(path: str | os.PathLike, reason: str) -> dict[str, Any]:
    """The row of an input that could not be scored: no decision (never "normal"), severity "error"."""
    return {"path": display_path(path), "score": None, "p_value": None, "is_anomaly": None, "severity": "error",
            "defect_area": None, "status": "error", "error": reason}


def _probe(p: Path) -> str:
    """"dir", "file" or "missing"; an unusable name (too long, bad bytes) counts as missing."""
    try:
        return "dir" if p.is_dir() else "file" if p.exists() else "missing"
    except (OSError, ValueError):
        return "missing"


def check_inputs(inputs: Sequence[str | Path]) -> None:
    """Refuse an empty input argument (`''` would otherwise mean the current folder, scanned recursively)."""
    for raw in inputs:
        if not str(raw).strip():
            raise ParameterError("an input path is empty (''): give a file or folder; an empty argument would "
                                 "otherwise mean the current folder")


def expand_paths(inputs: Sequence[str | Path]) -> Iterator[tuple[Path, str | None]]:
    """Each input file, or every image in an input folder; a missing input yields its path and an error."""
    from normalcy.data import list_images

    check_inputs(inputs)
    for raw in inputs:
        p = Path(raw)
        kind = _probe(p)
        if kind == "dir":
            try:
                for img in list_images(p, recursive=True):
                    yield img, None
            except (DataError, OSError) as exc:
                yield p, str(exc)
        elif kind == "file":
            yield p, None
        else:
            yield p, f"file not found: {display_path(p)}"


class ResultWriter:
    """Writes results.csv/results.jsonl rows and overlay/mask PNGs in input order; shared by local and dask runs."""

    def __init__(self, out: Path, calibration: Any, write_images: bool = True, total: int | None = None) -> None:
        from normalcy.explain.overlay import display_range

        self.out, self.write_images = Path(out), write_images
        self.vmin, self.vmax = display_range(calibration)
        self.total = total
        self.n_rows = self.n_failed = 0
        self.narrator: Any = None  # normalcy.explain.narrator.Narrator: describe each flagged image (needs overlays)
        # rows wait here, in input order, while a background thread draws and encodes their PNGs: the encoding
        # overlaps the next batch's scoring (zlib and PIL release the GIL); a row is written once its PNGs are written
        self._pending: deque[tuple[dict[str, Any], Future | None]] = deque()
        self._pool: ThreadPoolExecutor | None = None

    def __enter__(self) -> ResultWriter:
        self.out.mkdir(parents=True, exist_ok=True)
        if self.write_images:
            (self.out / "overlays").mkdir(exist_ok=True)
            (self.out / "masks").mkdir(exist_ok=True)
        self._fcsv = open(self.out / "results.csv", "w", newline="", encoding="utf-8")
        self._fjson = open(self.out / "results.jsonl", "w", encoding="utf-8")
        self._bar = progress_bar(total=self.total, desc="predict", unit="img")
        self._csv = csv.DictWriter(self._fcsv, fieldnames=CSV_FIELDS)
        self._csv.writeheader()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.drain()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
            self._bar.close()
        self._fjson.close()
        self._fcsv.close()

    def drain(self, wait: bool = True) -> None:
        """Write the waiting rows in order: all of them (`wait`), or those whose images are already written."""
        while self._pending and (wait or self._pending[0][1] is None or self._pending[0][1].done()):
            row, job = self._pending.popleft()
            if job is not None:
                try:
                    job.result()
                except (DataError, OSError, ValueError) as exc:
                    row["error"] = f"overlay and mask not written: {exc}"
                    row.pop("overlay", None)
                    row.pop("mask", None)
            self._write_row(row)

    @property
    def n_written(self) -> int:
        """Rows written or waiting for their images (the inputs this writer has been given)."""
        return self.n_rows + len(self._pending)

    def flush(self) -> None:
        """Push written rows to the OS, so a killed run keeps every row written so far in both files."""
        self.drain(wait=False)
        self._fjson.flush()
        self._fcsv.flush()

    def write(self, i: int, path: Path, err: str | None, pred: Any = None, image: Any = None) -> None:
        """Write row `i` (its overlay/mask too): an input error, or the Prediction made for `path`.

        `image` is the H×W×3 array that was scored; without it (dask runs) the file is read again for the overlay,
        and a failure to do so is noted in the row's error field without losing the row's decision.
        """
        if err is not None or pred is None or pred.status == "error":
            row = error_row(path, err if err is not None else getattr(pred, "error", "") or "not scored")
        else:
            row = pred.to_dict()
            row["path"] = display_path(path)
            row["boxes"] = [r["box"] for r in row.setdefault("regions", [])]  # regions: normalcy.explain.summary
            if self.write_images and pred.anomaly_map is not None:
                if self.narrator is None:  # drawn and encoded in the background; the row waits in order
                    stem = image_stem(i, path)
                    row["overlay"], row["mask"] = f"overlays/{stem}.png", f"masks/{stem}.png"
                    if self._pool is None:
                        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="normalcy-png")
                    self._pending.append((row, self._pool.submit(self._write_images, stem, path, pred, image)))
                    if len(self._pending) > MAX_PENDING_IMAGES:  # bounded memory when encoding lags behind
                        self.drain()
                    return
                try:
                    stem = image_stem(i, path)
                    img, ov = self._write_images(stem, path, pred, image)
                    row["overlay"], row["mask"] = f"overlays/{stem}.png", f"masks/{stem}.png"
                    if pred.is_anomaly and pred.explanation is not None:
                        text = self.narrator.narrate(img, ov, pred.explanation)
                        row["narrator"] = pred.explanation["narrator"] = text
                except (DataError, OSError, ValueError) as exc:
                    row["error"] = f"overlay and mask not written: {exc}"
        if self._pending:
            self._pending.append((row, None))
        else:
            self._write_row(row)

    def _write_images(self, stem: str, path: Path, pred: Any, image: Any) -> tuple[Any, Any]:
        """Draw and write row `stem`'s overlay and mask PNGs (from `image`, else the file read again)."""
        from normalcy.data import read_image
        from normalcy.explain.overlay import mask_image, overlay

        img = image if image is not None else read_image(path)
        ov = overlay(img, pred.anomaly_map, self.vmin, self.vmax, mask=pred.mask)
        ov.save(self.out / "overlays" / f"{stem}.png", compress_level=PNG_COMPRESS_LEVEL)
        mask_image(pred.mask).save(self.out / "masks" / f"{stem}.png", compress_level=PNG_COMPRESS_LEVEL)
        return img, ov

    def _write_row(self, row: dict[str, Any]) -> None:
        """Both lines are built first, then written, so the two files always hold the same rows."""
        line = json.dumps(row) + "\n"
        cells = {k: csv_safe(json.dumps(row[k]) if k == "boxes" and k in row else row.get(k, "")) for k in CSV_FIELDS}
        self._fjson.write(line)
        self._csv.writerow(cells)
        self.n_failed += row.get("status") == "error"
        self.n_rows += 1
        self._bar.update(1)


@dataclass
class _Batch:
    """Rows waiting to be scored together: (index, path, decoded image or error text), in input order."""

    rows: list[tuple[int, Path, Any]] = field(default_factory=list)
    n_images: int = 0
    pixels: int = 0

    def add(self, i: int, path: Path, item: Any) -> None:
        self.rows.append((i, path, item))
        if not isinstance(item, str):
            self.n_images += 1
            self.pixels += int(item.shape[0]) * int(item.shape[1])


class _StopFlag:
    """Set by SIGTERM while installed (main thread only): the run finishes its batch, then records the rest."""

    def __init__(self) -> None:
        self.set = False
        self._previous: Any = None

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.set = True

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _check_positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ParameterError(f"{name} must be a number > 0, got {value!r}")
    return float(value)


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
    max_megapixels: float = PREDICT_MAX_MEGAPIXELS,
    batch_megapixels: float = BATCH_MEGAPIXELS,
    groups: dict[str, str] | None = None,
) -> tuple[int, int]:
    """Write results.csv and results.jsonl (one row per input image) plus overlay/mask PNGs; (rows, failed).

    `groups` maps an input file (str of its path as listed) to its calibration group (a grouped model; default:
    the model's own assignment).

    A batch holds at most `batch` images and `batch_megapixels` decoded pixels; an image above `max_megapixels`
    is an error row. `gallery` (a folder or a normalcy.explain.gallery.DefectGallery) names each region's nearest
    known defect type; `narrator` (normalcy.explain.narrator.Narrator) adds a chat model's description of each
    flagged image.
    """
    from normalcy.store import load

    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ParameterError(f"batch must be a positive integer, got {batch!r}")
    cap = _check_positive("max_megapixels", max_megapixels)
    budget = int(_check_positive("batch_megapixels", batch_megapixels) * 1e6)
    entries = list(expand_paths(inputs))
    det = load(model) if isinstance(model, str | Path) else model
    det.progress = False
    if gallery is not None and not hasattr(gallery, "annotate"):
        from normalcy.explain.gallery import DefectGallery

        gallery = DefectGallery.from_folder(gallery, det)
    min_batch = int(getattr(det, "min_batch", 1) or 1)
    with ResultWriter(out, det.calibration_, write_images, total=len(entries)) as writer, _StopFlag() as stop:
        writer.narrator = narrator
        for part in prefetched(_batches(entries, batch, budget, cap, min_batch, stop)):
            if stop.set and writer.n_written:  # read ahead while the batch in flight was scored: not scored
                break
            _score_batch(det, part, writer, alpha, pixel_fpr, gallery, groups)
            writer.flush()
        writer.drain()
        if writer.n_rows < len(entries):  # stopped by SIGTERM: the inputs not reached are rows too
            print(f"normalcy: SIGTERM: finished the batch in flight; {len(entries) - writer.n_rows} input(s) not "
                  "scored are recorded as error rows", file=sys.stderr)
            for i in range(writer.n_rows, len(entries)):
                writer.write(i, entries[i][0], NOT_SCORED)
            writer.flush()
    return writer.n_rows, writer.n_failed


def prefetched(batches: Iterator[_Batch]) -> Iterator[_Batch]:
    """The same batches in order, the next one read in a background thread while the caller scores this one.

    Image decoding (PIL releases the GIL) overlaps scoring; at most one batch is read ahead. A reading error is
    raised here, in the caller's thread.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="normalcy-read") as pool:
        ahead = pool.submit(next, batches, None)
        while (part := ahead.result()) is not None:
            ahead = pool.submit(next, batches, None)
            yield part


def _batches(entries: list[tuple[Path, str | None]], size: int, budget: int, cap: float, min_batch: int,
             stop: _StopFlag) -> Iterator[_Batch]:
    """Read each input once, in order, into batches bounded by image count and decoded pixels.

    The last images are kept together so no batch is left with fewer than `min_batch` images when more exist
    (MuSc compares the images of a batch with each other and needs two).
    """
    from normalcy.data import read_image

    current = _Batch()
    for i, (path, err) in enumerate(entries):
        if stop.set:
            break
        if err is None:
            try:
                current.add(i, path, read_image(path, max_megapixels=cap))
            except DataError as exc:
                current.add(i, path, str(exc))
        else:
            current.add(i, path, err)
        full = current.n_images >= size or current.pixels >= budget
        if full and len(entries) - i - 1 >= min_batch:
            yield current
            current = _Batch()
    if current.rows:
        yield current


def _score_batch(det: Any, part: _Batch, writer: ResultWriter, alpha: float | None, pixel_fpr: float | None,
                 gallery: Any, groups: dict[str, str] | None = None) -> None:
    """Score the readable images of one batch together and write every row of the batch in input order."""
    images = [item for _, _, item in part.rows if not isinstance(item, str)]
    kw = {} if groups is None else {"groups": [groups[str(p)] for _, p, it in part.rows if not isinstance(it, str)]}
    found: list[Any] = []
    failure = ""
    if images:
        try:
            found = det.predict(images, alpha=alpha, pixel_fpr=pixel_fpr, **kw)
            attach_all(found, det.calibration_)
            if gallery is not None:
                gallery.annotate(det, images, found)
        except DataError as exc:  # e.g. MuSc given a single readable image: each becomes an error row
            failure, found = f"not scored: {exc}", []
    preds = iter(found)
    for i, path, item in part.rows:
        if isinstance(item, str):
            writer.write(i, path, item)
        elif failure:
            writer.write(i, path, failure)
        else:
            writer.write(i, path, None, next(preds), image=item)
