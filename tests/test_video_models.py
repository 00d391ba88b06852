"""Trained video detectors (video-predict, video-mil), the look-ahead window and the bench's region metric.

Synthetic clips from tests/test_video.py: a bright square moving right at 1 px/frame is normal; one that jumps to
6 px/frame from frame 20 on is the anomaly (exact frame labels).
"""

from __future__ import annotations

import numpy as np
import pytest

from normalcy import metrics
from normalcy.data.video import Clip
from normalcy.detectors import create_detector
from normalcy.detectors.video.mil import VideoMIL
from normalcy.detectors.video.motion import VideoMotion, _Window
from normalcy.detectors.video.predict import VideoPredict
from normalcy.errors import ParameterError
from tests.test_video import H, normal_clips, speeding_clip, square_clip, write_clip

SMALL = dict(motion="diff", frame_height=H, cell=8, top_k=4, smooth=3, lookahead=0, alpha=0.05)


def test_window_means_past_and_future_and_flushes():
    w = _Window(back=1, ahead=1)
    out = [x for i, raw in enumerate([1.0, 2.0, 3.0, 4.0]) for x in w.push((i, None), raw)]
    out += list(w.flush())
    assert [(fr, s) for fr, s, _ in out] == [(0, 1.5), (1, 2.0), (2, 3.0), (3, 3.5)]


def test_lookahead_delays_but_stream_equals_batch():
    det = VideoMotion(**(SMALL | dict(lookahead=1))).fit(normal_clips())
    clip, labels = speeding_clip()
    batch = [p.score for p in det.predict(clip)]
    assert len(batch) == len(labels)
    np.testing.assert_allclose([p.score for p in det.stream(iter(clip.frames))], batch)
    causal = [p.score for p in VideoMotion(**SMALL).fit(normal_clips()).predict(clip)]
    assert np.argmax(np.diff(batch)) < np.argmax(np.diff(causal))  # the centred window rises earlier
    with pytest.raises(ParameterError, match="lookahead"):
        VideoMotion(**(SMALL | dict(lookahead=3))).fit(normal_clips(2, 5))


def test_predict_detector_flags_the_speed_change_and_reloads(tmp_path):
    det = create_detector("video-predict", **SMALL, history=3, hidden=8, epochs=5, cal_every=3)
    assert isinstance(det, VideoPredict)
    det.fit(normal_clips(6, 30))
    assert det.n_train_clips_ == 4 and det.calibration_.n == 2 * 30  # clips 3 and 6 calibrate, unseen in training
    assert det.train_.steps > 0
    clip, labels = speeding_clip()
    preds = det.predict(clip)
    assert all(p.status == "ok" for p in preds)
    assert metrics.auroc(labels, [p.score for p in preds]) > 0.9
    from normalcy.store import load

    again = load(det.save(tmp_path / "p.normalcy"))
    np.testing.assert_allclose([p.score for p in again.predict(clip)], [p.score for p in preds], rtol=1e-5)
    np.testing.assert_allclose([p.score for p in det.stream(iter(clip.frames))], [p.score for p in preds], rtol=1e-5)


def test_mil_needs_weak_labels_and_ranks_anomalous_segments(tmp_path):
    with pytest.raises(ParameterError, match="one label per clip"):
        VideoMIL(**SMALL).fit(normal_clips(4, 10))
    rng = np.random.default_rng(0)
    anomalous = []
    for i in range(4):  # a fast stretch somewhere in each weakly labelled clip
        start = int(rng.integers(5, 20))
        anomalous.append(Clip(f"a{i}", square_clip([1.0] * start + [6.0] * 10 + [1.0] * (30 - start), seed=50 + i)))
    clips = normal_clips(8, 30) + anomalous
    det = create_detector("video-mil", **SMALL, segment=4, hidden=8, epochs=30, cal_every=4)
    det.fit(clips, [0] * 8 + [1] * 4)
    assert det.calibration_.n == 2 * 30 and det.n_train_clips_ == 6 + 4
    clip, labels = speeding_clip()
    scores = [p.score for p in det.predict(clip)]
    assert metrics.auroc(labels, scores) > 0.9
    from normalcy.store import load

    again = load(det.save(tmp_path / "m.normalcy"))
    np.testing.assert_allclose([p.score for p in again.predict(clip)], scores, rtol=1e-5)


def test_bench_region_metric_counts_overlaps(tmp_path):
    from PIL import Image

    from normalcy.apps.bench.video import score_test_clips
    from normalcy.data.video import list_clips

    data = tmp_path / "walkway"
    clip, labels = speeding_clip()
    write_clip(data / "test" / "t1", clip.frames)
    (data / "labels.csv").write_text("clip,frame,label\n" + "".join(f"t1,{i + 1},{y}\n" for i, y in enumerate(labels)))
    (data / "ground_truth" / "t1").mkdir(parents=True)
    x = 10.0
    speeds = [1.0] * 20 + [6.0] * 20
    for i, y in enumerate(labels):  # the square's true box in anomalous frames (its position as square_clip draws it)
        m = np.zeros(clip.frames[0].shape[:2], np.uint8)
        if y:
            xi = int(round(x)) % (96 - 12)
            m[26:38, xi:xi + 12] = 255
        Image.fromarray(m).save(data / "ground_truth" / "t1" / f"{i + 1:03d}.png")
        x += speeds[i]
    det = VideoMotion(**SMALL).fit(normal_clips())
    r = score_test_clips(det, data, list_clips(data / "test"))
    assert r["objects"] == 20 and r["regions"] > 0
    assert r["object_recall"] > 0.7 and r["region_precision"] > 0.5
    assert r["false_alarms_by_clip"]["t1"][1] == 20


def test_diff_weight_fuses_flow_and_difference_streams_and_reloads(tmp_path):
    pytest.importorskip("cv2", reason="diff_weight adds the frame difference to optical flow, which needs OpenCV")
    from normalcy.store import load

    flow = dict(SMALL, motion="flow")
    det = VideoMotion(**(flow | dict(diff_weight=0.5, lookahead=1))).fit(normal_clips())
    mf, sf, md, sd = det.norm_
    assert sf > 0 and sd > 0 and md > 0
    assert abs(float(np.median(det.calibration_.scores))) < 1.5  # calibration scores are on the z-scale
    clip, labels = speeding_clip()
    batch = [p.score for p in det.predict(clip)]
    assert metrics.auroc(labels, batch) > 0.9
    np.testing.assert_allclose([p.score for p in det.stream(iter(clip.frames))], batch)
    again = load(det.save(tmp_path / "f.normalcy"))
    assert again.norm_ == det.norm_
    np.testing.assert_allclose([p.score for p in again.predict(clip)], batch)
    plain = VideoMotion(**(flow | dict(diff_weight=0))).fit(normal_clips())
    assert plain.norm_ is None  # diff_weight=0: the flow score alone, unchanged
    with pytest.raises(ParameterError, match="diff_weight"):
        VideoMotion(**flow, diff_weight=-1).fit(normal_clips())


def test_model_saved_without_normalisation_loads_as_flow_only(tmp_path):
    pytest.importorskip("cv2", reason="needs OpenCV optical flow")
    from normalcy.store import load

    det = VideoMotion(**dict(SMALL, motion="flow", diff_weight=0)).fit(normal_clips())
    clip, _ = speeding_clip()
    before = [p.score for p in det.predict(clip)]
    det.diff_weight = 0.5  # as if an older file without `norm` were read by a version whose default fuses
    again = load(det.save(tmp_path / "old.normalcy"))
    assert again.diff_weight == 0.0 and again.norm_ is None
    np.testing.assert_allclose([p.score for p in again.predict(clip)], before)


def test_default_is_the_validated_lookahead_setting_and_streams_late():
    det = VideoMotion()
    assert (det.top_k, det.smooth, det.lookahead, det.diff_weight) == (3, 13, 8, 0.25)
    det = VideoMotion(motion="diff", frame_height=H, cell=8).fit(normal_clips())
    clip, labels = speeding_clip()
    read = []

    def camera():
        for f in clip.frames:
            read.append(f)
            yield f

    stream = det.stream(camera())
    first = next(stream)  # frame 1's decision waits for frames 2-9 (its motion is to frame 2; 8 frames ahead)
    assert first.path == "1" and len(read) == 9
    scores = [first.score] + [p.score for p in stream]
    np.testing.assert_allclose(scores, [p.score for p in det.predict(clip)])
    assert metrics.auroc(labels, scores) > 0.9
