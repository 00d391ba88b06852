"""The `Sample` record: one image file plus what we know about it (label, defect type, mask, category)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from normalcy.errors import ParameterError

NORMAL, ANOMALOUS, UNKNOWN = 0, 1, -1


@dataclass(frozen=True)
class Sample:
    """One image on disk with its ground truth, so loaders, detectors and metrics share one record."""

    path: Path  # image file
    label: int  # 0 normal, 1 anomalous, -1 unknown
    defect_type: str  # "good" for normals, the test sub-folder name otherwise, "" unknown
    mask_path: Path | None = None
    category: str = ""

    def __post_init__(self) -> None:
        """Coerce str paths to Path and reject impossible labels early instead of in a metric later."""
        object.__setattr__(self, "path", Path(self.path))
        if self.mask_path is not None:
            object.__setattr__(self, "mask_path", Path(self.mask_path))
        if isinstance(self.label, bool) or self.label not in (NORMAL, ANOMALOUS, UNKNOWN):
            raise ParameterError(
                f"Sample label for {self.path} is {self.label!r}; "
                "use 0 (normal), 1 (anomalous) or -1 (unknown)"
            )
        object.__setattr__(self, "label", int(self.label))
