"""One safe file per fitted model: safetensors for every array, JSON metadata in its header. Never pickle."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from normalcy.calibration.conformal import Calibration
from normalcy.data.files import atomic_path
from normalcy.errors import ModelFileError, ParameterError

FORMAT = "normalcy-model"
FORMAT_VERSION = 1
META_KEY = "normalcy"
CAL_PREFIX = "__calibration__/"


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _content_digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(name.encode())
        h.update(str(a.dtype).encode())
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save(detector: Any, path: str | Path) -> Path:
    """Write a fitted detector to `path` atomically (temp file + rename); returns the path."""
    from safetensors.numpy import save_file

    from normalcy import __version__

    detector.check_fitted()
    if hasattr(detector, "_save_sidecar"):  # large arrays kept in a file beside the model (PatchCore mmap bank)
        detector._save_sidecar(Path(path))
    arrays = {k: np.ascontiguousarray(v) for k, v in detector._state_arrays().items()}
    cal: Calibration = detector.calibration_
    arrays[CAL_PREFIX + "scores"] = cal.scores
    if cal.pixel_quantiles is not None:
        arrays[CAL_PREFIX + "pixel_fpr_levels"] = np.asarray(cal.pixel_fpr_levels, dtype=np.float64)
        arrays[CAL_PREFIX + "pixel_quantiles"] = np.asarray(cal.pixel_quantiles, dtype=np.float64)
    meta: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "normalcy_version": __version__,
        "detector": detector.name,
        "params": {k: _jsonable(v) for k, v in detector.get_params().items()},
        "calibration_method": cal.method,
        "n_fit": int(getattr(detector, "n_fit_", 0)),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "shapes": {k: list(v.shape) for k, v in arrays.items()},
        "content_sha256": _content_digest(arrays),
        "state": detector._state_meta(),
    }
    if getattr(detector, "kind", "") == "image":
        meta["backbone"] = {"name": detector.backbone, "weights_sha256": detector.extractor.backbone_sha256}
        meta["image_size"] = int(detector.image_size)
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(arrays, str(tmp), metadata={META_KEY: json.dumps(meta)})
    return path


def read_file(path: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Metadata and arrays of a model file, verified (format, version, shapes, content hash)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    try:
        with safe_open(str(path), framework="np") as f:
            header = f.metadata() or {}
            arrays = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises several types for truncated/garbage files
        raise ModelFileError(f"{path} is not a readable normalcy model file (truncated or corrupt): {exc}") from None
    try:
        meta = json.loads(header[META_KEY])
    except (KeyError, json.JSONDecodeError):
        raise ModelFileError(f"{path} is a safetensors file but not a normalcy model (no normalcy metadata)") from None
    if meta.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not a normalcy model file (format {meta.get('format')!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(
            f"{path} has model format version {meta.get('format_version')}, this normalcy reads version "
            f"{FORMAT_VERSION}; refit the model or use the normalcy version that wrote it "
            f"({meta.get('normalcy_version')})"
        )
    shapes = {k: list(v.shape) for k, v in arrays.items()}
    if shapes != meta.get("shapes"):
        raise ModelFileError(f"{path}: tensor names or shapes differ from its metadata (tampered file?)")
    if _content_digest(arrays) != meta.get("content_sha256"):
        raise ModelFileError(f"{path}: tensor contents do not match the recorded checksum (tampered or damaged)")
    return meta, arrays


def load(path: str | Path, check_backbone: bool = True) -> Any:
    """Rebuild a fitted detector from a model file; checks the backbone weights hash against this machine."""
    from normalcy.detectors import detector_class

    meta, arrays = read_file(path)
    try:
        cls = detector_class(meta["detector"])
    except ParameterError as exc:
        raise ModelFileError(f"{path}: {exc}") from None
    params = dict(meta["params"])
    defaults = cls().get_params()
    for k, v in params.items():
        if isinstance(defaults.get(k), tuple) and isinstance(v, list):
            params[k] = tuple(v)
    try:
        det = cls(**params)
    except TypeError as exc:
        raise ModelFileError(f"{path}: parameters do not fit detector {meta['detector']!r}: {exc}") from None
    if check_backbone and "backbone" in meta:
        have = det.extractor.backbone_sha256
        want = meta["backbone"]["weights_sha256"]
        if have != want:
            raise ModelFileError(
                f"{path} was fitted with {meta['backbone']['name']} weights sha256 {want[:12]}…, but the weights on "
                f"this machine hash to {have[:12]}…: install the same weights or pass weights=<that file>"
            )
    cal = Calibration(arrays.pop(CAL_PREFIX + "scores"), method=meta.get("calibration_method", "holdout"))
    if CAL_PREFIX + "pixel_quantiles" in arrays:
        cal.pixel_fpr_levels = arrays.pop(CAL_PREFIX + "pixel_fpr_levels")
        cal.pixel_quantiles = arrays.pop(CAL_PREFIX + "pixel_quantiles")
    det._model_path = Path(path)  # sidecar files named in the state are found beside the model file
    try:
        det._load_state(arrays, meta.get("state", {}))
    except (KeyError, ValueError) as exc:
        raise ModelFileError(f"{path}: stored state does not fit {meta['detector']!r}: {exc}") from None
    det.calibration_ = cal
    det.n_fit_ = meta.get("n_fit", 0)
    det.model_meta_ = meta
    return det
