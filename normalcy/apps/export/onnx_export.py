"""`normalcy export`: one ONNX graph (backbone → features → scores) with the model's metadata inside.

The graph is traced with torch's TorchScript-based exporter (`dynamo=False`): the network input has a fixed
square size, so a trace captures everything, exporting takes about a second and needs only `onnx`; the
`torch.export`-based exporter gave the same numbers but took ~20x longer and needs `onnxscript` as well.
"""

from __future__ import annotations

import io
import json
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from normalcy.apps.export.graph import MAX_BYTES, PatchCoreIVFGraph, build_graph
from normalcy.data.files import atomic_path
from normalcy.errors import MissingDependencyError, ParameterError

ONNX_FORMAT = "normalcy-onnx"
ONNX_FORMAT_VERSION = 1
META_KEY = "normalcy"  # key of the JSON entry in the ONNX model's metadata_props
OPSET = 17
INSTALL_HINT = "pip install 'normalcy[onnx]' (or: pip install onnx onnxruntime)"


def require(module: str) -> Any:
    """Import an optional ONNX package or raise MissingDependencyError saying how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(f"ONNX support needs the package {module!r}: {INSTALL_HINT} ({exc})") from None


def onnx_metadata(detector: Any, grid: tuple[int, int], outputs: list[str]) -> dict[str, Any]:
    """Everything the runtime needs besides the graph: format, parameters, calibration, pre/post-processing."""
    from normalcy import __version__
    from normalcy.store import FORMAT, FORMAT_VERSION, _jsonable  # the same parameter encoding as .normalcy files

    cal = detector.calibration_
    source = getattr(detector, "model_meta_", {}) or {}
    calibration: dict[str, Any] = {"method": cal.method, "scores": [float(s) for s in np.asarray(cal.scores)]}
    if cal.pixel_quantiles is not None:
        calibration["pixel_fpr_levels"] = [float(v) for v in np.asarray(cal.pixel_fpr_levels)]
        calibration["pixel_quantiles"] = [float(v) for v in np.asarray(cal.pixel_quantiles)]
    meta = {
        "format": ONNX_FORMAT,
        "format_version": ONNX_FORMAT_VERSION,
        "normalcy_version": __version__,
        "detector": detector.name,
        "params": {k: _jsonable(v) for k, v in detector.get_params().items()},
        "image_size": int(detector.image_size),
        "resize_mode": detector.resize_mode,
        "canvas": list(detector.canvas),
        "sigma": float(detector.sigma),
        "grid": list(grid),
        "inputs": {"image": "N×3×S×S float32 RGB in [0, 1]",
                   "valid": "N×h×w bool, cells that decide the image score (on the image, outside the border band)"},
        "outputs": outputs,
        "calibration": calibration,
        "n_fit": int(getattr(detector, "n_fit_", 0)),
        "backbone": {"name": detector.backbone, "weights_sha256": detector.extractor.backbone_sha256},
        "source_model": {"format": FORMAT, "format_version": FORMAT_VERSION,
                         "content_sha256": source.get("content_sha256"), "created": source.get("created")},
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if detector.name == "patchcore":
        from normalcy.apps.export.graph import search_mode

        meta["search"] = search_mode(detector)  # "ivf": the torch model's own lists and probes; else every row
        meta["n_probe"] = int(getattr(detector, "n_probe", 0))
    return meta


def _trace(graph: torch.nn.Module, size: tuple[int, int], grid: tuple[int, int], outputs: list[str]) -> bytes:
    """Serialized ONNX of `graph`, dynamic in the batch dimension only."""
    image = torch.rand(2, 3, *size)
    valid = torch.ones(2, *grid, dtype=torch.bool)
    buf = io.BytesIO()
    axes = {name: {0: "batch"} for name in ["image", "valid", *outputs]}
    with warnings.catch_warnings():  # tracer chatter: shape checks become constants, which is what we want
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, (image, valid), buf, dynamo=False, input_names=["image", "valid"],
                          output_names=outputs, dynamic_axes=axes, opset_version=OPSET, do_constant_folding=True)
    return buf.getvalue()


def export_onnx(model: Any, out: str | Path) -> Path:
    """Write a fitted detector (or a .normalcy file) as one ONNX file with its metadata; returns the path."""
    onnx = require("onnx")
    if isinstance(model, (str, Path)):
        from normalcy.store import load

        model = load(model)
    graph = build_graph(model)
    n_bytes = sum(t.numel() * t.element_size() for t in [*graph.parameters(), *graph.buffers()])
    if n_bytes > MAX_BYTES:
        raise ParameterError(f"{model.name} holds {n_bytes / 2**30:.1f} GiB of weights and state, more than one ONNX "
                             f"file can hold (2 GiB); refit with a smaller memory bank (coreset_ratio)")
    size = model.canvas  # (height, width); "aspect" models trace their fitted canvas
    grid = model.extractor.grid(size)
    outputs = ["score"] if model.name == "gaussian" else ["score", "patch_map"]
    if isinstance(graph, PatchCoreIVFGraph):  # the torch model's IVF search: one Loop over its lists
        from normalcy.apps.export.ivf import ivf_proto

        proto = ivf_proto(graph, size, grid, OPSET)
    else:
        proto = onnx.load_from_string(_trace(graph, size, grid, outputs))
    meta = onnx_metadata(model, grid, outputs)
    onnx.helper.set_model_props(proto, {META_KEY: json.dumps(meta)})
    proto.doc_string = f"normalcy {meta['normalcy_version']} {model.name} (image_size {size}); see metadata_props"
    onnx.checker.check_model(proto)
    out = Path(out)
    with atomic_path(out) as tmp:
        onnx.save(proto, str(tmp))
    return out
