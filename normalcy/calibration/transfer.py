"""Decisions with few normal images: p-values from a normalization learned on other data (NOT conformal).

With k normal references, conformal p-values are impossible (k = 1) or too coarse (the smallest is 1/(k+1)), so
a few-shot detector could never flag anything. Instead each image gets a scale-free statistic of its own anomaly
map, ``z = (max over the centre − median) / median absolute deviation`` (how far the worst spot stands out from
the rest of the same image), and its p-value is the upper-tail fraction of z among normal images of *other*
datasets scored by the same detector with the same k. Those normal statistics are measured once on auxiliary
data and shipped as a small JSON table (`data/fewshot_transfer.json`, built by `benchmarks/fewshot_transfer.py`).

The false-alarm rate is then only as good as the transfer from the auxiliary data: it is an estimate, not a
guarantee, and every prediction made this way says so (`calibration: "transfer"`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from normalcy.errors import ModelFileError, ParameterError

MIN_CONFORMAL = 20  # below this many normal images, decisions use the transfer table
DEFAULT_TABLE = Path(__file__).parent / "data" / "fewshot_transfer.json"
FORMAT = "normalcy-transfer-v1"


def map_statistic(anomaly_map: np.ndarray, border: float = 0.0625) -> float:
    """Scale-free outlyingness of a map's worst spot: (max over the centre − median) / MAD of the whole map.

    The centre excludes a band of `border` × the shorter side (as the image score does); the MAD is floored at
    1e-6 of the median magnitude so a flat map does not divide by zero.
    """
    m = np.asarray(anomaly_map, dtype=np.float64)
    if m.ndim != 2 or m.size == 0:
        raise ParameterError(f"an anomaly map must be a non-empty H×W array, got shape {m.shape}")
    h, w = m.shape
    b = int(round(float(border) * min(h, w)))
    centre = m[b : h - b, b : w - b] if min(h, w) > 2 * b else m
    med = float(np.median(m))
    mad = float(np.median(np.abs(m - med)))
    return (float(centre.max()) - med) / max(mad, 1e-6 * abs(med), 1e-12)


@dataclass
class TransferTable:
    """Normal map statistics of one detector measured on auxiliary data, per number of references k."""

    detector: str
    normals: dict[int, np.ndarray]  # k -> sorted statistics of normal auxiliary images
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.normals:
            raise ParameterError(f"a transfer table needs normal statistics for at least one k ({self.detector})")
        self.normals = {int(k): np.sort(np.asarray(v, dtype=np.float64)) for k, v in self.normals.items()}

    def nearest_k(self, k: int) -> int:
        """The tabulated k closest to `k` on a log scale (more references shrink every distance)."""
        ks = np.array(sorted(self.normals))
        return int(ks[np.argmin(np.abs(np.log(ks) - math.log(max(int(k), 1))))])

    def p_values(self, stats: np.ndarray, k: int) -> np.ndarray:
        """Upper-tail p-values (1 + #{aux normals >= z}) / (n + 1) of statistics `stats` for k references."""
        ref = self.normals[self.nearest_k(k)]
        z = np.asarray(stats, dtype=np.float64)
        n_ge = ref.size - np.searchsorted(ref, z, side="left")
        return (1.0 + n_ge) / (ref.size + 1.0)

    def threshold(self, alpha: float, k: int) -> float:
        """The statistic above which p <= alpha (inf when the table is too small to reach alpha)."""
        ref = self.normals[self.nearest_k(k)][::-1]
        allowed = math.floor(alpha * (ref.size + 1) + 1e-9) - 1
        if allowed < 0:
            return math.inf
        return float(ref[min(allowed, ref.size - 1)])

    def to_json(self) -> dict[str, Any]:
        return {"detector": self.detector, "normals": {str(k): v.round(5).tolist() for k, v in self.normals.items()},
                "meta": self.meta}


def save_tables(tables: list[TransferTable], path: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Write transfer tables (one per detector) as one JSON file, atomically."""
    from normalcy.data.files import atomic_path

    path = Path(path)
    doc = {"format": FORMAT, "meta": meta or {}, "tables": [t.to_json() for t in tables]}
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(doc, indent=1))
        Path(tmp).chmod(0o644)  # package data: readable by every user
    return path


def load_table(detector: str, path: str | Path | None = None) -> TransferTable | None:
    """The transfer table of `detector` from `path` (None: the built-in file); None when it has no such table."""
    p = DEFAULT_TABLE if path is None else Path(path).expanduser()
    try:
        doc = json.loads(p.read_text())
    except FileNotFoundError:
        if path is None:
            return None
        raise ModelFileError(f"transfer table {p} does not exist; pass a file or transfer_table=None") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"transfer table {p} is not readable JSON ({exc}); rebuild it with "
                             "benchmarks/fewshot_transfer.py") from None
    if doc.get("format") != FORMAT:
        raise ModelFileError(f"transfer table {p} has format {doc.get('format')!r}, expected {FORMAT!r}")
    for t in doc["tables"]:
        if t["detector"] == detector:
            return TransferTable(detector, {int(k): v for k, v in t["normals"].items()}, t.get("meta", {}))
    return None
