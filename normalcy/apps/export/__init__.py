"""Export fitted detectors to ONNX (one graph: backbone, features, scores) and run them with onnxruntime."""

from __future__ import annotations

from normalcy.apps.export.graph import EXPORTABLE, build_graph, check_exportable
from normalcy.apps.export.onnx_export import ONNX_FORMAT, ONNX_FORMAT_VERSION, export_onnx
from normalcy.apps.export.onnx_runtime import OnnxModel, load_onnx

__all__ = ["EXPORTABLE", "ONNX_FORMAT", "ONNX_FORMAT_VERSION", "OnnxModel", "build_graph", "check_exportable",
           "export_onnx", "load_onnx"]
