"""PatchCore's IVF search as one ONNX `Loop` over the k-means lists, so the exported model finds the same
neighbours as the torch model (same centroids, lists and probes) at IVF cost, with a graph of a few hundred nodes.

The graph is three parts joined with `onnx.compose`: the traced feature part (image → patch queries, their squared
norms and the `n_probe` nearest lists of each), a hand-written loop (per list: the queries that probe it, their
distances to the list's rows, a running minimum per query), and the traced finish (distances → patch map and
image score via `masked_max`). The lists are stored padded to the longest one; padding rows have an infinite
squared norm so they never win.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from torch import Tensor, nn

from normalcy.detectors.image.common import masked_max


class IVFQueries(nn.Module):
    """image → (queries M×C, squared norms M, probed list ids M×n_probe), M = batch × cells."""

    def __init__(self, graph: nn.Module) -> None:
        super().__init__()
        self.g = graph

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        q3, _, _, raw = self.g.queries(image)
        q = q3.reshape(-1, q3.shape[-1])
        q_sq = q.pow(2).sum(1)
        d2c = torch.matmul(q, self.g.centroids.T).mul(-2.0).add(self.g.centroid_sq).add(q_sq[:, None])
        probes = torch.topk(d2c, self.g.n_probe, dim=1, largest=False).indices
        return (q, q_sq, probes, raw) if self.g.positional else (q, q_sq, probes)


class IVFFinish(nn.Module):
    """(squared distance per cell M, valid N×h×w[, grid features]) → (image scores N, patch maps N×h×w), with
    patchcore's positional fusion when the model has it (graph._fused, the same as the exact graph)."""

    def __init__(self, graph: nn.Module) -> None:
        super().__init__()
        self.g = graph

    def forward(self, best: Tensor, valid: Tensor, raw: Tensor | None = None) -> tuple[Tensor, Tensor]:
        from normalcy.apps.export.graph import _fused

        maps = best.clamp(min=0).sqrt().reshape(valid.shape)
        if raw is not None:
            maps = _fused(self.g, raw, maps)
        return masked_max(maps, valid), maps


def padded_lists(graph: nn.Module) -> tuple[np.ndarray, np.ndarray]:
    """The lists' rows as K×C×Lmax (transposed for the matmul) and their squared norms K×Lmax (+inf = padding)."""
    lists = [getattr(graph, f"list_{lst}") for lst in graph.lists]
    k, dim, longest = len(lists), lists[0].shape[1], max(r.shape[0] for r in lists)
    rows_t = np.zeros((k, dim, longest), dtype=np.float32)
    sq = np.full((k, longest), np.inf, dtype=np.float32)
    for i, r in enumerate(lists):
        rows_t[i, :, : r.shape[0]] = r.numpy().T
        sq[i, : r.shape[0]] = r.pow(2).sum(1).numpy()
    return rows_t, sq


def _loop_model(onnx, graph: nn.Module, opset: int, ir_version: int):
    """The hand-written part: inputs q, q_sq, probes → output best (squared distance of each query's neighbour)."""
    h, tp = onnx.helper, onnx.TensorProto
    rows_t, sq = padded_lists(graph)
    # the loop runs over positions 0..K-1 in `graph.lists`; probes hold list ids, so map position → list id
    list_ids = np.asarray(graph.lists, dtype=np.int64)
    body = h.make_graph(
        [
            h.make_node("Gather", ["list_ids", "i"], ["lst"], axis=0),
            h.make_node("Equal", ["probes", "lst"], ["hit"]),
            h.make_node("Cast", ["hit"], ["hit_i"], to=tp.INT32),
            h.make_node("ReduceMax", ["hit_i"], ["any"], axes=[1], keepdims=0),
            h.make_node("NonZero", ["any"], ["nz"]),
            h.make_node("Reshape", ["nz", "minus_one"], ["who"]),
            h.make_node("Gather", ["q", "who"], ["qw"], axis=0),
            h.make_node("Gather", ["rows_t", "i"], ["rw"], axis=0),
            h.make_node("Gather", ["rows_sq", "i"], ["rsq"], axis=0),
            h.make_node("MatMul", ["qw", "rw"], ["dot"]),
            h.make_node("Mul", ["dot", "minus_two"], ["d_a"]),
            h.make_node("Add", ["d_a", "rsq"], ["d_b"]),
            h.make_node("Gather", ["q_sq", "who"], ["qsw"], axis=0),
            h.make_node("Unsqueeze", ["qsw", "axis_one"], ["qsw2"]),
            h.make_node("Add", ["d_b", "qsw2"], ["d2"]),
            h.make_node("ReduceMin", ["d2"], ["dmin"], axes=[1], keepdims=0),
            h.make_node("Gather", ["best_in", "who"], ["cur"], axis=0),
            h.make_node("Min", ["cur", "dmin"], ["new"]),
            h.make_node("Unsqueeze", ["who", "axis_one"], ["idx"]),
            h.make_node("ScatterND", ["best_in", "idx", "new"], ["best_out"]),
            h.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "ivf_list",
        [h.make_tensor_value_info("i", tp.INT64, []), h.make_tensor_value_info("cond_in", tp.BOOL, []),
         h.make_tensor_value_info("best_in", tp.FLOAT, ["M"])],
        [h.make_tensor_value_info("cond_out", tp.BOOL, []), h.make_tensor_value_info("best_out", tp.FLOAT, ["M"])],
    )
    consts = [
        onnx.numpy_helper.from_array(rows_t, "rows_t"),
        onnx.numpy_helper.from_array(sq, "rows_sq"),
        onnx.numpy_helper.from_array(list_ids, "list_ids"),
        onnx.numpy_helper.from_array(np.array([-1], dtype=np.int64), "minus_one"),
        onnx.numpy_helper.from_array(np.array(-2.0, dtype=np.float32), "minus_two"),
        onnx.numpy_helper.from_array(np.array([1], dtype=np.int64), "axis_one"),
        onnx.numpy_helper.from_array(np.array(len(list_ids), dtype=np.int64), "trips"),
        onnx.numpy_helper.from_array(np.array(True), "always"),
        onnx.numpy_helper.from_array(np.array([np.inf], dtype=np.float32), "inf1"),
    ]
    outer = h.make_graph(
        [
            h.make_node("Shape", ["q_sq"], ["m"]),
            h.make_node("Expand", ["inf1", "m"], ["best0"]),
            h.make_node("Loop", ["trips", "always", "best0"], ["best"], body=body),
        ],
        "ivf_search",
        [h.make_tensor_value_info("q", tp.FLOAT, ["M", rows_t.shape[1]]),
         h.make_tensor_value_info("q_sq", tp.FLOAT, ["M"]),
         h.make_tensor_value_info("probes", tp.INT64, ["M", graph.n_probe])],
        [h.make_tensor_value_info("best", tp.FLOAT, ["M"])],
        initializer=consts,
    )
    model = h.make_model(outer, opset_imports=[h.make_opsetid("", opset)])
    model.ir_version = ir_version
    return model


def _trace(module: nn.Module, args: tuple, inputs: list[str], outputs: list[str], axes: dict, opset: int):
    import onnx

    buf = io.BytesIO()
    with warnings.catch_warnings():  # tracer chatter: shape checks become constants, which is what we want
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, buf, dynamo=False, input_names=inputs, output_names=outputs,
                          dynamic_axes=axes, opset_version=opset, do_constant_folding=True)
    return onnx.load_from_string(buf.getvalue())


def ivf_proto(graph: nn.Module, size: tuple[int, int], grid: tuple[int, int], opset: int):
    """The whole patchcore IVF model (inputs image, valid; outputs score, patch_map) as one ModelProto."""
    import onnx
    from onnx import compose

    image = torch.rand(2, 3, *size)  # size: the network input (height, width)
    extra = ["raw"] if graph.positional else []
    queries_module = IVFQueries(graph).eval()
    queries = _trace(queries_module, (image,), ["image"], ["q", "q_sq", "probes", *extra],
                     {"image": {0: "batch"}, "q": {0: "M"}, "q_sq": {0: "M"}, "probes": {0: "M"},
                      **{e: {0: "batch"} for e in extra}}, opset)
    finish_args: tuple = (torch.rand(2 * grid[0] * grid[1]), torch.ones(2, *grid, dtype=torch.bool))
    if extra:
        with torch.no_grad():
            finish_args += (queries_module(image)[3],)
    finish = _trace(IVFFinish(graph).eval(), finish_args, ["best", "valid", *extra], ["score", "patch_map"],
                    {"best": {0: "M"}, "valid": {0: "batch"}, "score": {0: "batch"}, "patch_map": {0: "batch"},
                     **{e: {0: "batch"} for e in extra}}, opset)
    finish = compose.add_prefix(finish, "finish/", rename_inputs=False, rename_outputs=False)
    loop = _loop_model(onnx, graph, opset, queries.ir_version)
    joined = compose.merge_models(queries, loop, io_map=[("q", "q"), ("q_sq", "q_sq"), ("probes", "probes")],
                                  outputs=["best", *extra])
    return compose.merge_models(joined, finish, io_map=[("best", "best"), *[(e, e) for e in extra]])
