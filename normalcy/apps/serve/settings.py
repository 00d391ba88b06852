"""Service settings: the limits that keep one server safe to expose, with defaults documented in docs/serve.md."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from normalcy.errors import ParameterError

MIB = 1024 * 1024


@dataclass(frozen=True)
class ServeSettings:
    """Everything the service needs to start: the model file and every resource limit."""

    model_path: Path | None = None
    max_files: int = 16  # images per request
    max_file_bytes: int = 20 * MIB  # one uploaded file
    max_request_bytes: int = 100 * MIB  # the whole request body
    max_pixels: int = 40_000_000  # width x height of one image, checked before decoding (decompression bombs)
    queue_size: int = 16  # requests allowed to wait for a worker; beyond that the server answers 503
    workers: int = 1  # inference threads (torch already uses every core inside one)
    chunk_size: int = 4  # images decoded and scored together (bounds peak memory per request)
    preview_max_side: int = 1024  # longest side of the overlay/heat-map PNGs; the mask stays full size
    db: str | None = None  # history database: a SQLite file path or a SQLAlchemy URL (None: keep no history)
    history_dir: Path | None = None  # thumbnails, masks and spool (default: beside a SQLite file)
    drift_budget: float = 0.01  # chance of ever raising a drift alarm on a stream without drift
    keep_images: bool = False  # with db: keep each uploaded image as a file too (for `normalcy fit --from-db`)

    def __post_init__(self) -> None:
        if self.model_path is not None:
            object.__setattr__(self, "model_path", Path(self.model_path))
        for name in ("max_files", "max_file_bytes", "max_request_bytes", "max_pixels", "workers", "chunk_size",
                     "preview_max_side"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ParameterError(f"serve setting {name} must be a positive integer, got {value!r}")
        if isinstance(self.queue_size, bool) or not isinstance(self.queue_size, int) or self.queue_size < 0:
            raise ParameterError(f"serve setting queue_size must be an integer >= 0, got {self.queue_size!r}")
        if not 0 < self.drift_budget < 1:
            raise ParameterError(f"serve setting drift_budget must be in (0, 1), got {self.drift_budget!r}")

    def limits(self) -> dict[str, Any]:
        """The public limits (no file paths), as reported by `GET /model`."""
        out = asdict(self)
        # not limits; and the DB URL may hold a password
        for private in ("model_path", "db", "history_dir", "drift_budget", "keep_images"):
            out.pop(private)
        return out
