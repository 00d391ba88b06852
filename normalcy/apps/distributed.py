"""`normalcy predict --engine dask`: score images on a Dask cluster, write the same rows as the local run.

The model file travels once per worker inside a worker plugin (new or restarted workers get it too), chunks of
image *paths* are sent as tasks (workers read the images: inputs must be on a filesystem every worker sees), and
the client writes each chunk's rows in input order with `predict_io.ResultWriter`. A chunk lost with its worker is
rerun by Dask itself; a chunk that still fails is resubmitted up to `resubmits` times, then its images become
error rows — rows in = rows out, and a chunk index is written once.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from normalcy.errors import ClusterError, MissingDependencyError
from normalcy.explain.summary import attach_all

try:  # workers always have distributed; elsewhere the module still imports and says what to install
    from distributed import WorkerPlugin
except ImportError:  # pragma: no cover - exercised only without the dask extra
    WorkerPlugin = object  # type: ignore[assignment,misc]

log = logging.getLogger(__name__)
CHUNK_SIZE = 8  # images per task: small enough to spread over workers, large enough to batch the backbone
_MODELS: dict[str, Any] = {}  # per worker process: model key -> loaded detector


def import_distributed() -> Any:
    """The `distributed` module, or a clear error naming the extra to install."""
    try:
        import distributed
    except ImportError as exc:
        raise MissingDependencyError(
            f"--engine dask needs Dask distributed, which is not installed ({exc}); "
            "install it with pip install 'normalcy[dask]'"
        ) from None
    return distributed


class ModelPlugin(WorkerPlugin):
    """Worker plugin carrying the model file (bytes, or a shared path for a model with a bank sidecar)."""

    def __init__(self, key: str, data: bytes | None, path: str | None) -> None:
        self.key, self.data, self.path = key, data, path
        self.name = f"normalcy-model-{key[:16]}"  # one per model: runs of different models can share a cluster

    def setup(self, worker: Any) -> None:
        """Load the model once in this worker process, with torch limited to the worker's threads."""
        import torch

        from normalcy.store import load

        torch.set_num_threads(max(1, int(worker.state.nthreads)))
        if self.key in _MODELS:
            return
        path = Path(self.path) if self.data is None else Path(worker.local_directory) / f"{self.key[:16]}.normalcy"
        if self.data is not None:
            path.write_bytes(self.data)
        det = load(path)
        det.progress = False
        _MODELS[self.key] = det

    def teardown(self, worker: Any) -> None:
        """Forget the model when the plugin is removed."""
        _MODELS.pop(self.key, None)


def score_chunk(key: str, index: int, entries: list[tuple[str, str | None]], alpha: float | None,
                pixel_fpr: float | None) -> tuple[int, list[Any]]:
    """On a worker: Predictions for one chunk (None where the input was already an error), with its index."""
    det = _MODELS.get(key)
    if det is None:
        raise ClusterError("this worker has no normalcy model loaded (the worker plugin did not run)")
    readable = [p for p, err in entries if err is None]
    found = det.predict(readable, alpha=alpha, pixel_fpr=pixel_fpr) if readable else []
    preds = iter(attach_all(found, det.calibration_))
    return index, [None if err is not None else next(preds) for _, err in entries]


def model_plugin(model_path: Path) -> ModelPlugin:
    """The plugin shipping `model_path`: its bytes, or its path when a bank sidecar must stay beside it."""
    from normalcy.store import read_file

    meta, _ = read_file(model_path)
    data = model_path.read_bytes()
    key = hashlib.sha256(data).hexdigest()
    if "bank_file" in meta.get("state", {}):
        return ModelPlugin(key, None, str(model_path.resolve()))
    return ModelPlugin(key, data, None)


def connect(stack: ExitStack, scheduler: str | None, workers: int, connect_timeout: float) -> Any:
    """A Client for `scheduler`, or for a new LocalCluster of `workers` single-threaded processes."""
    distributed = import_distributed()
    if scheduler is None:
        cluster = stack.enter_context(distributed.LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",  # any free port
            silence_logs=logging.ERROR))
        return stack.enter_context(distributed.Client(cluster))
    try:
        return stack.enter_context(distributed.Client(scheduler, timeout=connect_timeout))
    except Exception as exc:  # refused, timed out, or something that is not a Dask scheduler answered
        raise ClusterError(f"cannot reach the Dask scheduler at {scheduler} within {connect_timeout:g} s: {exc}; "
                           "check the address (tcp://host:port) and that a Dask scheduler is running there") from None


def predict_distributed(
    model: str | Path,
    inputs: Sequence[str | Path],
    out: Path,
    alpha: float | None = None,
    pixel_fpr: float | None = None,
    write_images: bool = True,
    scheduler: str | None = None,
    workers: int = 2,
    chunk_size: int = CHUNK_SIZE,
    connect_timeout: float = 10.0,
    resubmits: int = 2,
    chunk_fn: Callable[..., tuple[int, list[Any]]] = score_chunk,
) -> tuple[int, int]:
    """Like `predict_to_folder`, scored on a Dask cluster; (rows, failed). `chunk_fn` replaces `score_chunk`."""
    from normalcy.apps.results import ResultWriter, expand_paths
    from normalcy.store import load

    model_path = Path(model)
    calibration = load(model_path).calibration_  # a broken model fails here, before any cluster starts
    plugin = model_plugin(model_path)
    entries = list(expand_paths(inputs))
    chunks = [entries[s : s + chunk_size] for s in range(0, len(entries), max(1, chunk_size))]
    with ExitStack() as stack:
        client = connect(stack, scheduler, workers, connect_timeout)
        distributed = import_distributed()
        client.register_plugin(plugin, name=plugin.name)
        if scheduler is not None:  # a long-lived cluster: drop the model from its workers when this run ends
            stack.callback(_unregister, client, plugin.name)

        def submit(ci: int) -> Any:
            payload = [(str(Path(p).absolute()), err) for p, err in chunks[ci]]  # workers have their own cwd
            return client.submit(chunk_fn, plugin.key, ci, payload, alpha, pixel_fpr, pure=False, retries=1)

        pending = {submit(ci): ci for ci in range(len(chunks))}
        attempts = dict.fromkeys(range(len(chunks)), 0)
        done: dict[int, list[Any]] = {}
        next_ci = 0
        stream = distributed.as_completed(list(pending))
        with ResultWriter(out, calibration, write_images, total=len(entries)) as writer:
            for fut in stream:
                ci = pending.pop(fut)
                try:
                    got_ci, preds = fut.result()
                    if got_ci != ci:
                        raise ClusterError(f"chunk {ci} came back labelled {got_ci}")
                except Exception as exc:  # a worker lost too often (KilledWorker) or the task itself failed
                    attempts[ci] += 1
                    log.warning("chunk %d failed (%s: %s); %s", ci, type(exc).__name__, exc,
                                "resubmitting" if attempts[ci] <= resubmits else "giving up: its rows become errors")
                    if attempts[ci] <= resubmits:
                        again = submit(ci)
                        pending[again] = ci
                        stream.add(again)
                        continue
                    preds = [ClusterError(f"chunk {ci} failed after {attempts[ci]} tries: {exc}")]
                if ci < next_ci or ci in done:
                    continue  # a duplicate result is never written twice
                done[ci] = preds
                while next_ci in done:
                    _write_chunk(writer, next_ci * chunk_size, chunks[next_ci], done.pop(next_ci))
                    next_ci += 1
    if writer.n_rows != len(entries):
        raise ClusterError(f"wrote {writer.n_rows} rows for {len(entries)} inputs: results are incomplete")
    return writer.n_rows, writer.n_failed


def _unregister(client: Any, name: str) -> None:
    """Best-effort removal of this run's model plugin from a shared cluster (workers free the model)."""
    try:
        client.unregister_worker_plugin(name)
    except Exception as exc:  # the cluster may be gone already; nothing is lost either way
        log.warning("could not remove worker plugin %s: %s", name, exc)


def _write_chunk(writer: Any, first: int, chunk: list, preds: list[Any]) -> None:
    """Rows of one chunk in order; a failed chunk (one exception) turns each of its images into an error row."""
    failed = preds[0] if len(preds) == 1 and isinstance(preds[0], Exception) else None
    for j, (path, err) in enumerate(chunk):
        if failed is not None and err is None:
            writer.write(first + j, path, str(failed))
        else:
            writer.write(first + j, path, err, None if err is not None else preds[j])
