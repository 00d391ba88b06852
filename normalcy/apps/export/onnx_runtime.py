"""Run an exported ONNX model with onnxruntime and return the same Predictions as the torch detector.

`OnnxModel` is an `ImageDetector` whose scoring step is the ONNX session: preprocessing (`prepare_batch`,
`valid_grid`), map restoration (`restore_maps`), calibration (`decide`) and the error-row handling of
`predict_iter` are the very same code the torch detectors run, so `predict_io` and the CLI take either.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from normalcy.apps.export.onnx_export import META_KEY, ONNX_FORMAT, ONNX_FORMAT_VERSION, require
from normalcy.calibration.conformal import Calibration
from normalcy.detectors.base import ScoreResult
from normalcy.detectors.image.common import ImageDetector
from normalcy.detectors.image.intensity import gain_normalize
from normalcy.errors import ModelFileError, ParameterError
from normalcy.features.preprocess import prepare_batch, restore_maps, valid_grid


def read_onnx_metadata(session: Any, path: Path) -> dict[str, Any]:
    """The normalcy metadata of a loaded session, checked for format and version."""
    props = session.get_modelmeta().custom_metadata_map
    try:
        meta = json.loads(props[META_KEY])
    except (KeyError, json.JSONDecodeError):
        raise ModelFileError(f"{path} is an ONNX file but not a normalcy model (no normalcy metadata); export "
                             "one with `normalcy export model.normalcy -o model.onnx`") from None
    if not isinstance(meta, dict) or meta.get("format") != ONNX_FORMAT:
        raise ModelFileError(f"{path} is not a normalcy ONNX model (format {meta.get('format')!r})")
    if meta.get("format_version") != ONNX_FORMAT_VERSION:
        raise ModelFileError(
            f"{path} has normalcy ONNX format version {meta.get('format_version')}, this normalcy reads version "
            f"{ONNX_FORMAT_VERSION}; re-export it from the .normalcy model with this version or use the normalcy "
            f"version that wrote it ({meta.get('normalcy_version')})"
        )
    return meta


def _calibration(meta: dict[str, Any]) -> Calibration:
    c = meta["calibration"]
    cal = Calibration(np.asarray(c["scores"], dtype=np.float64), method=c.get("method", "holdout"))
    if "pixel_quantiles" in c:
        cal.pixel_fpr_levels = np.asarray(c["pixel_fpr_levels"], dtype=np.float64)
        cal.pixel_quantiles = np.asarray(c["pixel_quantiles"], dtype=np.float64)
    return cal


class OnnxModel(ImageDetector):
    """An exported normalcy model run by onnxruntime; `predict`/`score` match the torch detector's output."""

    name = "onnx"

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        self.path = path
        self.threads = threads
        self._open()

    def _open(self) -> None:
        """Load the session and the metadata (format, parameters, calibration) it carries."""
        ort = require("onnxruntime")
        path = Path(self.path)
        if not path.is_file():
            raise ModelFileError(f"ONNX model file not found: {path}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(self.threads or torch.get_num_threads())
        opts.inter_op_num_threads = 1
        opts.enable_cpu_mem_arena = False  # the arena keeps its high-water mark: ~180 MB more peak, no speed gain
        try:
            session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable files
            raise ModelFileError(f"{path} is not a readable ONNX model (truncated or corrupt): {exc}") from None
        meta = read_onnx_metadata(session, path)
        params = meta["params"]
        self.session_ = session
        self.model_meta_ = meta
        self.detector_ = meta["detector"]
        self.image_size = int(meta["image_size"])
        self.resize_mode = meta["resize_mode"]
        self.canvas_ = tuple(int(v) for v in meta.get("canvas", (self.image_size, self.image_size)))
        self.sigma = float(meta["sigma"])
        self.grid_ = tuple(meta["grid"])
        self.batch_size = int(params.get("batch_size", 16))
        self.alpha = float(params.get("alpha", 0.01))
        self.pixel_fpr = float(params.get("pixel_fpr", 0.001))
        self.border = float(params.get("border", 0.0))  # patchcore's image score skips this edge band
        self.intensity = params.get("intensity")  # "gain": images are gain-normalized before the graph, as in torch
        self.progress = False
        self.calibration_ = _calibration(meta)
        self.n_fit_ = int(meta.get("n_fit", 0))
        self._inputs = [i.name for i in session.get_inputs()]

    def fit(self, X: Any, y: Any = None) -> OnnxModel:
        """Not possible: an ONNX file is a fitted model; fit the torch detector and export it again."""
        raise ParameterError("an ONNX model cannot be fitted; fit the torch detector and export it again")

    def save(self, path: Any) -> Any:
        """Not possible: the ONNX file itself is the saved form."""
        raise ParameterError(f"an ONNX model is saved already ({self.path}); copy that file instead")

    @property
    def extractor(self):
        """Not available: the backbone lives inside the ONNX graph; features (e.g. --gallery) need the torch model."""
        raise ParameterError(f"{self.path} is an ONNX model: its backbone features are not exposed; use the .normalcy "
                             "model for anything that needs them (e.g. predict --gallery)")

    def run(self, x: torch.Tensor, valid: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        """Raw graph outputs for a preprocessed batch: (N image scores, N×h×w patch maps or None)."""
        feeds = {"image": x.numpy(), "valid": valid.numpy()}
        outs = self.session_.run(None, {k: v for k, v in feeds.items() if k in self._inputs})
        return outs[0], (outs[1] if len(outs) > 1 else None)

    def _score(self, items: list) -> ScoreResult:
        from normalcy.data import as_rgb_array

        size = self.canvas
        scores, maps = [], []
        for start in range(0, len(items), self.batch_size):
            arrays = [as_rgb_array(a) for a in items[start : start + self.batch_size]]
            if self.intensity == "gain":
                arrays = [gain_normalize(a) for a in arrays]
            x, placements = prepare_batch(arrays, size, self.input_mode)
            img_scores, patch_maps = self.run(x, self.score_cells(valid_grid(placements, size, self.grid_)))
            scores.append(np.asarray(img_scores, dtype=np.float64))
            if patch_maps is not None:
                maps.extend(restore_maps(torch.from_numpy(patch_maps), placements, size, self.sigma))
        return ScoreResult(np.concatenate(scores), maps or None)


def load_onnx(path: str | Path, threads: int | None = None) -> OnnxModel:
    """Open an exported normalcy ONNX file (checks it is ours and of this format version)."""
    return OnnxModel(path, threads=threads)
