"""Dense motion between consecutive frames: OpenCV's Farneback optical flow when installed, else frame differences.

Both give a per-pixel motion magnitude at the working resolution: the flow's speed in pixels per frame, or the
absolute grey-level change (0..1). OpenCV comes from the optional `opencv-python-headless` package
(`pip install 'normalcy[video]'`); the frame-difference fallback needs nothing beyond numpy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from normalcy.errors import MissingDependencyError, ParameterError

MOTION_KINDS = ("auto", "flow", "diff")


def opencv() -> Any | None:
    """The cv2 module, or None when OpenCV is not installed."""
    try:
        import cv2
    except ImportError:
        return None
    return cv2


def resolve_motion(kind: str) -> str:
    """"flow" or "diff" for a requested `motion` ("auto" = flow when OpenCV is installed)."""
    if kind not in MOTION_KINDS:
        raise ParameterError(f"motion must be one of {', '.join(MOTION_KINDS)}, got {kind!r}")
    if kind == "auto":
        return "flow" if opencv() is not None else "diff"
    if kind == "flow" and opencv() is None:
        raise MissingDependencyError("motion='flow' needs OpenCV: pip install 'normalcy[video]' "
                                     "(opencv-python-headless), or use motion='diff'")
    return kind


class MotionField:
    """Motion magnitude (H×W float32) between the previous and the current grey frame."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._cv2 = opencv() if kind == "flow" else None
        if self._cv2 is not None:
            self._cv2.setNumThreads(1)

    def __call__(self, prev: np.ndarray, cur: np.ndarray) -> np.ndarray:
        """Both frames H×W uint8 at the working resolution.

        Farneback (3 pyramid levels, 15 px window): on Ped2 it separated fast objects far better than DIS's fast
        preset (frame AUROC 0.93 vs 0.71 in our runs, docs/video.md).
        """
        if self._cv2 is not None:
            flow = self._cv2.calcOpticalFlowFarneback(prev, cur, None, 0.5, 3, 15, 3, 5, 1.2, 0)
            return np.sqrt((flow * flow).sum(-1)).astype(np.float32)
        return np.abs(cur.astype(np.float32) - prev.astype(np.float32)) / 255.0
