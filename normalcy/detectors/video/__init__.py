"""Video detectors: clips of frames in, one calibrated decision per frame out (see docs/video.md)."""

from __future__ import annotations

VIDEO_DETECTORS: dict[str, str] = {
    "video": "normalcy.detectors.video.motion:VideoMotion",
    "video-predict": "normalcy.detectors.video.predict:VideoPredict",
    "video-mil": "normalcy.detectors.video.mil:VideoMIL",
}
