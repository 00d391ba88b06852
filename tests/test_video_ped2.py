"""The default video detector on a few real UCSD Ped2 clips (skipped when ../shared/data is absent)."""

from __future__ import annotations

import numpy as np
import pytest

from normalcy import metrics
from normalcy.apps.bench.video import frame_labels
from normalcy.data.video import list_clips
from normalcy.detectors.video.motion import VideoMotion
from tests.conftest import SHARED_DATA

PED2 = SHARED_DATA / "video" / "ucsd_ped2"
pytestmark = pytest.mark.skipif(not (PED2 / "train").is_dir(),
                                reason=f"real data not found at {PED2} (it lives in ../shared/data beside the repo)")


def test_video_detector_on_two_real_test_clips():
    train = list_clips(PED2 / "train")[:4]
    det = VideoMotion().fit(train)
    assert det.calibration_.n == sum(len(c.frames) for c in train)
    labels = frame_labels(PED2)
    tests = [c for c in list_clips(PED2 / "test") if c.name in ("Test001", "Test002")]  # bikes enter mid-clip
    preds = [p for c in tests for _, p in det.predict_frames(c)]
    y = np.concatenate([labels[c.name] for c in tests])
    assert len(preds) == len(y) and all(p.status == "ok" for p in preds)
    assert preds[0].anomaly_map.shape == (240, 360)
    assert metrics.auroc(y, [p.score for p in preds]) > 0.85
