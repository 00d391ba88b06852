"""Decisions with few normal images: p-values from a normalization learned on other data (NOT conformal).

With k normal references, conformal p-values are impossible (k = 1) or too coarse (the smallest is 1/(k+1)), so
a few-shot detector could never flag anything. Instead each image gets a scale-free statistic of its own anomaly
map, ``z = (max over the centre − median) / median absolute deviation`` (how far the worst spot stands out from
the rest of the same image), and its p-value is the upper-tail fraction of z among normal images of *other*
datasets scored by the same detector with the same k. Those normal statistics are measured once on auxiliary
data and shipped as a small JSON table (`data/fewshot_transfer.json`, built by `benchmarks/fewshot_transfer.py`).

Auxiliary datasets differ in how far their normal statistics spread, so a table that records them per source
decides with the *largest* per-source p-value (`rule="max"`): an image is flagged only if it is extreme against
every source. That p-value is valid for a new dataset whose normal statistic is no heavier-tailed than the
heaviest source's, and adding an easy source (one whose normals have small z) cannot make decisions laxer, as
pooling would. Tables without per-source statistics (written before this rule) keep the pooled p-value.
Even so a new dataset can be heavier-tailed than every source (leave-one-dataset-out on the two real sets gave
up to 3 × alpha), so the shipped table also multiplies the p-value by a safety factor `p_factor` (2: each source
is asked for p <= alpha / 2); older tables have factor 1.

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

from normalcy.calibration.conformal import conformal_p_values, score_threshold
from normalcy.errors import ModelFileError, ParameterError

MIN_CONFORMAL = 20  # below this many normal images, decisions use the transfer table
DEFAULT_TABLE = Path(__file__).parent / "data" / "fewshot_transfer.json"
FORMAT = "normalcy-transfer-v1"
RULES = ("pool", "max")


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
    normals: dict[int, np.ndarray]  # k -> sorted statistics of normal auxiliary images (all sources pooled)
    meta: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, dict[int, np.ndarray]] = field(default_factory=dict)  # source -> k -> its statistics
    rule: str = "pool"  # "pool": one p-value from all normals; "max": the largest per-source p-value
    p_factor: float = 1.0  # safety factor: p-value = min(1, p_factor × the rule's p-value)

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ParameterError(f"transfer rule must be one of {RULES}, got {self.rule!r}")
        if not (math.isfinite(self.p_factor) and self.p_factor >= 1.0):
            raise ParameterError(f"p_factor must be a finite number >= 1, got {self.p_factor!r}")
        if self.rule == "max" and not self.sources:
            raise ParameterError(f"rule='max' needs per-source statistics ({self.detector})")
        self.sources = {str(name): {int(k): np.sort(np.asarray(v, dtype=np.float64)) for k, v in per.items()}
                        for name, per in self.sources.items()}
        if not self.normals and self.sources:  # pooled statistics follow from the sources
            ks = {k for per in self.sources.values() for k in per}
            self.normals = {k: np.concatenate([per[k] for per in self.sources.values() if k in per]) for k in ks}
        if not self.normals:
            raise ParameterError(f"a transfer table needs normal statistics for at least one k ({self.detector})")
        self.normals = {int(k): np.sort(np.asarray(v, dtype=np.float64)) for k, v in self.normals.items()}

    def _references(self, k: int) -> list[np.ndarray]:
        """The sorted normal statistics the rule compares with for k references: one array per source or pooled."""
        kk = self.nearest_k(k)
        if self.rule == "max":
            return [per[kk] for per in self.sources.values() if kk in per and per[kk].size]
        return [self.normals[kk]]

    def nearest_k(self, k: int) -> int:
        """The tabulated k closest to `k` on a log scale (more references shrink every distance)."""
        ks = np.array(sorted(self.normals))
        return int(ks[np.argmin(np.abs(np.log(ks) - math.log(max(int(k), 1))))])

    def p_values(self, stats: np.ndarray, k: int) -> np.ndarray:
        """Upper-tail p-values (1 + #{aux normals >= z}) / (n + 1) of `stats` for k references (max over sources),
        times `p_factor` (capped at 1)."""
        z = np.asarray(stats, dtype=np.float64)
        p = np.max([conformal_p_values(ref, z) for ref in self._references(k)], axis=0)
        return np.minimum(1.0, self.p_factor * p)

    def threshold(self, alpha: float, k: int) -> float:
        """The statistic above which p <= alpha (inf when a source is too small to reach alpha / p_factor)."""
        return max(score_threshold(ref, alpha / self.p_factor) for ref in self._references(k))

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"detector": self.detector,
                               "normals": {str(k): v.round(5).tolist() for k, v in self.normals.items()},
                               "meta": self.meta}
        if self.sources:  # additive keys: readers that predate them use the pooled normals
            doc["rule"] = self.rule
            doc["p_factor"] = self.p_factor
            doc["sources"] = {name: {str(k): v.round(5).tolist() for k, v in per.items()}
                              for name, per in self.sources.items()}
        return doc


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
            sources = {name: {int(k): v for k, v in per.items()} for name, per in t.get("sources", {}).items()}
            return TransferTable(detector, {int(k): v for k, v in t["normals"].items()}, t.get("meta", {}),
                                 sources, t.get("rule", "pool"), float(t.get("p_factor", 1.0)))
    return None
