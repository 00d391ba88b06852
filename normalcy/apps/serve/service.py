"""The loaded model and what the service does with it: describe it, and score a batch of checked uploads."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from normalcy.apps.serve.history.capture import HISTORY_KEY
from normalcy.apps.serve.render import render_pictures
from normalcy.apps.serve.settings import ServeSettings
from normalcy.apps.serve.uploads import UploadInfo, decode_upload
from normalcy.apps.serve.workqueue import InferenceQueue
from normalcy.calibration.conformal import SUSPICIOUS_FACTOR, check_alpha
from normalcy.errors import DataError, ParameterError
from normalcy.explain.summary import attach_all


@dataclass
class PendingImage:
    """One upload that passed the limits, waiting to be decoded and scored on a worker thread."""

    index: int
    filename: str
    file: BinaryIO
    info: UploadInfo


def _finite(x: float) -> float | None:
    """JSON has no NaN/inf: None instead."""
    return float(x) if x is not None and math.isfinite(x) else None


class ModelService:
    """A fitted image detector plus its inference queue; one instance per app, built at start-up."""

    def __init__(self, detector: Any, settings: ServeSettings, source: str = "") -> None:
        from normalcy.explain.overlay import display_range

        if getattr(detector, "kind", "") != "image":
            raise ParameterError(f"normalcy serve needs an image detector, got {detector.name!r} "
                                 f"({getattr(detector, 'kind', '?')} data)")
        detector.check_fitted()
        detector.progress = False
        self.detector = detector
        self.settings = settings
        self.source = source
        self.vmin, self.vmax = display_range(detector.calibration_)
        self.queue = InferenceQueue(settings.workers, settings.queue_size)
        # history/drift hook, run on the inference thread per image: (bytes, image, mask) -> extras (set by app.py)
        self.capture: Callable[..., dict[str, Any]] | None = None

    # ---- metadata -----------------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """Model metadata for `GET /model`, including the calibration scores the page needs to re-decide."""
        from normalcy import __version__

        det = self.detector
        meta = getattr(det, "model_meta_", {}) or {}
        cal = det.calibration_
        return {
            "detector": det.name,
            "params": meta.get("params") or {k: _jsonable(v) for k, v in det.get_params().items()},
            "backbone": meta.get("backbone") or {"name": getattr(det, "backbone", None), "weights_sha256": None},
            "image_size": int(det.image_size),
            "model_file": self.source,
            "normalcy_version": meta.get("normalcy_version", __version__),
            "server_version": __version__,
            "created": meta.get("created"),
            "n_fit": int(getattr(det, "n_fit_", 0) or 0),
            "default_alpha": float(det.alpha),
            "default_pixel_fpr": float(getattr(det, "pixel_fpr", 0.001)),
            "calibration": {
                "method": cal.method,
                "n": cal.n,
                "scores": [float(s) for s in cal.scores],
                "severe_threshold": _finite(cal.severe_threshold()),
                "suspicious_factor": SUSPICIOUS_FACTOR,
                "min_reachable_alpha": 1.0 / (cal.n + 1) if cal.n else None,
            },
            "display_range": [float(self.vmin), float(self.vmax)],
            "limits": self.settings.limits(),
        }

    def resolve(self, alpha: float | None, pixel_fpr: float | None) -> tuple[float, float]:
        """The alpha and pixel_fpr a request uses (the model's defaults when not given), validated."""
        det = self.detector
        return (check_alpha(det.alpha if alpha is None else alpha),
                check_alpha(getattr(det, "pixel_fpr", 0.001) if pixel_fpr is None else pixel_fpr, "pixel_fpr"))

    def warm_up(self) -> None:
        """Score one blank image so the backbone is built and the first real request is not slow."""
        size = int(self.detector.image_size)
        self.detector.predict([np.zeros((size, size, 3), dtype=np.uint8)])

    # ---- scoring (runs on a worker thread) -----------------------------------------------------------------
    def predict_batch(self, items: list[PendingImage], alpha: float, pixel_fpr: float,
                      pictures: bool = True) -> list[dict[str, Any]]:
        """Decode, score and render the uploads chunk by chunk; a bad image becomes an error entry."""
        results: list[dict[str, Any]] = []
        for part in self._chunks(items):
            results.extend(self._predict_chunk(part, alpha, pixel_fpr, pictures))
        return results

    def _chunks(self, items: list[PendingImage]) -> list[list[PendingImage]]:
        """Consecutive groups of at most `chunk_size` images and `max_pixels` pixels (one big image alone)."""
        chunks: list[list[PendingImage]] = []
        pixels = 0
        for it in items:
            n = (it.info.width or 0) * (it.info.height or 0)
            if not chunks or len(chunks[-1]) >= self.settings.chunk_size or pixels + n > self.settings.max_pixels:
                chunks.append([])
                pixels = 0
            chunks[-1].append(it)
            pixels += n
        return chunks

    def _predict_chunk(self, items: list[PendingImage], alpha: float, pixel_fpr: float,
                       pictures: bool) -> list[dict[str, Any]]:
        arrays: dict[int, np.ndarray] = {}
        raw: dict[int, bytes] = {}
        out: dict[int, dict[str, Any]] = {}
        for it in items:
            base = {"index": it.index, "filename": it.filename, "format": it.info.format}
            if it.info.header_error:
                out[it.index] = base | {"status": "error", "severity": "error", "error": it.info.header_error}
                continue
            try:
                it.file.seek(0)
                raw[it.index] = it.file.read()
                arrays[it.index] = decode_upload(raw[it.index], it.info.format)
            except DataError as exc:
                out[it.index] = base | {"status": "error", "severity": "error", "error": str(exc)}
        order = list(arrays)
        preds = self.detector.predict([arrays[i] for i in order], alpha=alpha, pixel_fpr=pixel_fpr) if order else []
        attach_all(preds, self.detector.calibration_)
        by_index = {it.index: it for it in items}
        for i, pred in zip(order, preds):
            img = arrays.pop(i)
            row = pred.to_dict()
            row.pop("path", None)
            row |= {"index": i, "filename": by_index[i].filename, "format": by_index[i].info.format,
                    "width": int(img.shape[1]), "height": int(img.shape[0])}
            row.setdefault("regions", [])  # described by normalcy.explain.summary in the prediction
            if pred.status == "ok" and pictures and pred.anomaly_map is not None:
                row |= render_pictures(img, pred.anomaly_map, pred.mask, self.vmin, self.vmax,
                                       self.settings.preview_max_side)
            if self.capture is not None:
                row[HISTORY_KEY] = self.capture(raw.pop(i), img, pred.mask if pred.status == "ok" else None)
            out[i] = row
        if self.capture is not None:  # images that could not be decoded are recorded too, with their input hash
            for it in items:
                if HISTORY_KEY not in out[it.index]:
                    it.file.seek(0)
                    out[it.index][HISTORY_KEY] = self.capture(raw.pop(it.index, None) or it.file.read())
        return [out[it.index] for it in items]

    def threshold(self, alpha: float) -> float | None:
        """Score threshold at `alpha` (None when too few calibration scores to ever flag)."""
        return _finite(self.detector.calibration_.threshold(alpha))


def _jsonable(value: Any) -> Any:
    """Params of an in-memory detector as JSON values (paths and tuples become strings and lists)."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def model_source_name(path: Path | None) -> str:
    """Only the file name of the model, never the server's directory layout."""
    return path.name if path is not None else "(in-memory model)"
