"""One safe file per fitted model: safetensors for every array, JSON metadata in its header. Never pickle."""

from __future__ import annotations

import hashlib
import json
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from normalcy.calibration.conformal import Calibration
from normalcy.calibration.fitting import calibration_arrays, restore_calibration
from normalcy.data.files import atomic_path
from normalcy.errors import BackboneError, ModelFileError, ParameterError

FORMAT = "normalcy-model"
FORMAT_VERSION = 2  # 2: the metadata text is checksummed too (META_HASH_KEY); 1 is still read, with a warning
READS_VERSIONS = (1, 2)
META_KEY = "normalcy"
META_HASH_KEY = "normalcy_sha256"  # sha256 of the metadata text, which itself holds the tensors' checksum
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


def _text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


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
    extra, cal_meta = calibration_arrays(detector, CAL_PREFIX)  # folds, groups, fold models (cross-conformal)
    arrays |= extra
    meta: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "normalcy_version": __version__,
        "detector": detector.name,
        "params": {k: _jsonable(v) for k, v in detector.get_params().items()},
        "calibration_method": cal.method,
        "calibration": cal_meta,
        "n_fit": int(getattr(detector, "n_fit_", 0)),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "shapes": {k: list(v.shape) for k, v in arrays.items()},
        "content_sha256": _content_digest(arrays),
        "state": detector._state_meta(),
    }
    if getattr(detector, "input_schema_", None) is not None:
        meta["input_schema"] = detector.input_schema_
    if getattr(detector, "kind", "") == "image":
        meta["backbone"] = {"name": detector.backbone, "weights_sha256": detector.extractor.backbone_sha256}
        meta["image_size"] = int(detector.image_size)
    path = Path(path)
    with atomic_path(path) as tmp:
        text = json.dumps(meta)
        save_file(arrays, str(tmp), metadata={META_KEY: text, META_HASH_KEY: _text_digest(text)})
    return path


def _checked_meta(path: Path, header: dict[str, str]) -> dict[str, Any]:
    """The metadata dict, verified: ours, a version we read, and (version 2+) unchanged since it was written."""
    text = header.get(META_KEY)
    try:
        meta = json.loads(text) if isinstance(text, str) else None
    except (json.JSONDecodeError, RecursionError):
        meta = None
    if not isinstance(meta, dict):
        raise ModelFileError(f"{path} is a safetensors file but not a normalcy model (no readable normalcy metadata)")
    if meta.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not a normalcy model file (format {str(meta.get('format'))[:40]!r})")
    version = meta.get("format_version")
    if isinstance(version, bool) or version not in READS_VERSIONS:
        raise ModelFileError(
            f"{path} has model format version {str(version)[:20]}, this normalcy reads versions "
            f"{', '.join(map(str, READS_VERSIONS))}; refit the model or use the normalcy version that wrote it "
            f"({str(meta.get('normalcy_version'))[:20]})"
        )
    if version >= 2 and header.get(META_HASH_KEY) != _text_digest(text):
        raise ModelFileError(f"{path}: its metadata does not match the recorded checksum (tampered or damaged)")
    if version < 2:
        warnings.warn(f"{path} is a format-1 model: its metadata is not checksummed; save it again (or refit) to "
                      "protect it", UserWarning, stacklevel=3)
    _check_meta_fields(path, meta)
    return meta


_META_TYPES: dict[str, type] = {"detector": str, "params": dict, "shapes": dict, "content_sha256": str}


def _check_meta_fields(path: Path, meta: dict[str, Any]) -> None:
    """Each field the loader uses has the right type (a bad one is a ModelFileError, never a KeyError later)."""
    for key, kind in _META_TYPES.items():
        if not isinstance(meta.get(key), kind):
            raise ModelFileError(f"{path}: metadata field {key!r} is missing or has the wrong type (damaged file?)")
    for key, kind in (("calibration_method", str), ("n_fit", int), ("backbone", dict), ("image_size", int),
                      ("state", dict)):
        if key in meta and not isinstance(meta[key], kind):
            raise ModelFileError(f"{path}: metadata field {key!r} has the wrong type (damaged file?)")
    if "backbone" in meta and not all(isinstance(meta["backbone"].get(k), str) for k in ("name", "weights_sha256")):
        raise ModelFileError(f"{path}: metadata field 'backbone' is incomplete (damaged file?)")
    if "bank_file" in meta.get("state", {}):
        from normalcy.detectors.image.bank import check_sidecar_name

        check_sidecar_name(meta["state"]["bank_file"], path)


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
    meta = _checked_meta(path, header)
    shapes = {k: list(v.shape) for k, v in arrays.items()}
    if shapes != meta.get("shapes"):
        raise ModelFileError(f"{path}: tensor names or shapes differ from its metadata (tampered file?)")
    if _content_digest(arrays) != meta.get("content_sha256"):
        raise ModelFileError(f"{path}: tensor contents do not match the recorded checksum (tampered or damaged)")
    return meta, arrays


def _same_kind(value: Any, default: Any) -> bool:
    """A stored parameter has the JSON kind of its default (numbers may be int or float; None means any)."""
    if default is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int | float):
        return isinstance(value, int | float) and not isinstance(value, bool) and (
            isinstance(default, float) or isinstance(value, int))
    if isinstance(default, str | Path):  # None: a named option switched off (transfer_table=None, prior=None)
        return isinstance(value, str) or value is None
    if isinstance(default, tuple | list):
        return isinstance(value, tuple | list)
    return True


def _check_param_types(path: str | Path, params: dict[str, Any], defaults: dict[str, Any]) -> None:
    """Every stored parameter exists and has the kind of its default; alpha/pixel_fpr are rates in (0, 1)."""
    from normalcy.calibration.conformal import check_alpha

    for k, v in params.items():
        if k not in defaults:
            raise ModelFileError(f"{path}: stored parameter {k!r} is unknown to this detector (damaged file?)")
        if not _same_kind(v, defaults[k]):
            raise ModelFileError(f"{path}: stored parameter {k!r} has the wrong type {type(v).__name__} "
                                 "(damaged file?)")
    for k in ("alpha", "pixel_fpr"):
        if k in params:
            try:
                check_alpha(params[k], k)
            except ParameterError:
                raise ModelFileError(f"{path}: stored {k} {params[k]!r} is not a rate in (0, 1)") from None


def load(path: str | Path, check_backbone: bool = True) -> Any:
    """Rebuild a fitted detector from a model file; checks the backbone weights hash against this machine."""
    meta, arrays = read_file(path)
    try:
        return _rebuild(path, meta, arrays, check_backbone)
    except (ModelFileError, BackboneError):
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, ParameterError) as exc:
        raise ModelFileError(f"{path}: stored settings do not fit detector {str(meta.get('detector'))[:40]!r} "
                             f"({type(exc).__name__}: {exc}); the file is damaged or from another version") from None


def _rebuild(path: str | Path, meta: dict[str, Any], arrays: dict[str, np.ndarray], check_backbone: bool) -> Any:
    """The detector described by verified metadata and arrays (raises plain errors; `load` types them)."""
    from normalcy.detectors import detector_class

    try:
        cls = detector_class(meta["detector"])
    except ParameterError as exc:
        raise ModelFileError(f"{path}: {exc}") from None
    params = dict(meta["params"])
    defaults = cls().get_params()
    for k, v in getattr(cls, "OLD_FILE_PARAMS", {}).items():  # added later: keep the behaviour it was fitted with
        if k in defaults:
            params.setdefault(k, v)
    for k, v in params.items():
        if isinstance(defaults.get(k), tuple) and isinstance(v, list):
            params[k] = tuple(v)
    _check_param_types(path, params, defaults)
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
    extra = {k: arrays.pop(k) for k in [k for k in arrays if k.startswith(CAL_PREFIX)]}
    try:
        det._load_state(arrays, meta.get("state", {}))
        restore_calibration(det, cal, extra, meta.get("calibration", {}), CAL_PREFIX)
    except (KeyError, ValueError) as exc:
        raise ModelFileError(f"{path}: stored state does not fit {meta['detector']!r}: {exc}") from None
    det.calibration_ = cal
    det.n_fit_ = meta.get("n_fit", 0)
    det.model_meta_ = meta
    if isinstance(meta.get("input_schema"), dict):  # tables/texts/series fitted by the CLI: how to read inputs
        det.input_schema_ = meta["input_schema"]
    return det
