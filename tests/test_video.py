"""Video detector on synthetic clips with exact labels: a square that speeds up, streaming, save/load, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from normalcy import metrics
from normalcy.data.video import Clip, list_clips
from normalcy.detectors import create_detector
from normalcy.detectors.video.flow import opencv
from normalcy.detectors.video.motion import VideoMotion
from normalcy.errors import EmptyFolderError, MissingDependencyError

H, W, SIDE = 64, 96, 12


def square_clip(speeds: list[float], seed: int, start: float = 10.0) -> list[np.ndarray]:
    """Grey frames (H×W×3 uint8) of a bright square moving right at speeds[t] px per frame, with mild noise."""
    rng = np.random.default_rng(seed)
    x, frames = start, []
    for v in speeds:
        img = np.full((H, W), 60, np.float32) + rng.normal(0, 2, (H, W))
        xi = int(round(x)) % (W - SIDE)
        img[26:26 + SIDE, xi:xi + SIDE] = 200
        frames.append(np.repeat(img.clip(0, 255).astype(np.uint8)[..., None], 3, axis=2))
        x += v
    return frames


def normal_clips(n: int = 6, length: int = 30) -> list[Clip]:
    return [Clip(f"n{i}", square_clip([1.0] * length, seed=i, start=5.0 + 7 * i)) for i in range(n)]


def speeding_clip() -> tuple[Clip, np.ndarray]:
    """20 frames at the normal speed, then 20 at 6 px per frame; label 1 from frame 20 on."""
    labels = np.array([0] * 20 + [1] * 20)
    return Clip("test", square_clip([1.0] * 20 + [6.0] * 20, seed=99)), labels


def detector(**kw) -> VideoMotion:
    params = dict(motion="diff", frame_height=H, cell=8, top_k=4, smooth=3, lookahead=0, alpha=0.05)
    return VideoMotion(**(params | kw))


def test_registered_and_calibrated_on_every_normal_frame():
    det = create_detector("video", motion="diff")
    assert isinstance(det, VideoMotion)
    det = detector().fit(normal_clips())
    assert det.calibration_.n == 6 * 30 and det.n_fit_ == 6


def test_square_that_speeds_up_is_flagged_and_located():
    det = detector().fit(normal_clips())
    clip, labels = speeding_clip()
    preds = det.predict(clip)
    assert len(preds) == len(labels) and all(p.status == "ok" for p in preds)
    scores = np.array([p.score for p in preds])
    assert metrics.auroc(labels, scores) > 0.95
    flagged = np.array([p.is_anomaly for p in preds])
    assert flagged[25:].all()  # after the smoothing window every fast frame is flagged
    assert not flagged[:20].any()
    amap = preds[30].anomaly_map
    assert amap.shape == (H, W)
    y, _ = np.unravel_index(np.argmax(amap), amap.shape)
    assert 20 <= y <= 44  # the map peaks on the square's rows


def test_stream_matches_whole_clip_and_reload(tmp_path):
    det = detector().fit(normal_clips())
    clip, _ = speeding_clip()
    batch = [p.score for p in det.predict(clip)]
    streamed = [p.score for p in det.stream(iter(clip.frames))]
    np.testing.assert_allclose(streamed, batch)
    path = det.save(tmp_path / "m.normalcy")
    from normalcy.store import load

    again = load(path)
    np.testing.assert_allclose([p.p_value for p in again.predict(clip)], [p.p_value for p in det.predict(clip)])


@pytest.mark.skipif(opencv() is None, reason="OpenCV (opencv-python-headless, normalcy[video]) is not installed")
def test_optical_flow_motion_separates_speeds():
    det = detector(motion="flow").fit(normal_clips())
    clip, labels = speeding_clip()
    assert metrics.auroc(labels, [p.score for p in det.predict(clip)]) > 0.95


def test_flow_without_opencv_is_a_clear_error(monkeypatch):
    import normalcy.detectors.video.flow as flow

    monkeypatch.setattr(flow, "opencv", lambda: None)
    with pytest.raises(MissingDependencyError, match="normalcy\\[video\\]"):
        detector(motion="flow").fit(normal_clips(2, 5))


def write_clip(folder, frames) -> None:
    folder.mkdir(parents=True)
    for i, f in enumerate(frames):
        Image.fromarray(f).save(folder / f"{i + 1:03d}.png")


def test_bad_input_rows(tmp_path):
    det = detector().fit(normal_clips())
    root = tmp_path / "clips"
    write_clip(root / "a_ok", square_clip([1.0] * 6, seed=1))
    (root / "b_empty").mkdir(parents=True)
    frames = square_clip([1.0] * 6, seed=2)
    write_clip(root / "c_broken", frames)
    (root / "c_broken" / "003.png").write_bytes(b"not an image")
    Image.fromarray(frames[4][:32]).save(root / "c_broken" / "005.png")  # another size than the clip's frames
    write_clip(root / "d_single", square_clip([1.0], seed=3))
    rows = list(det.predict_frames(root))
    by_clip: dict[str, list] = {}
    for clip, p in rows:
        by_clip.setdefault(clip, []).append(p)
    assert [p.status for p in by_clip["a_ok"]] == ["ok"] * 6
    assert [p.status for p in by_clip["b_empty"]] == ["error"] and "no frames" in by_clip["b_empty"][0].error
    broken = {p.path: p for p in by_clip["c_broken"]}
    assert len(broken) == 6
    assert broken["003.png"].status == "error" and broken["003.png"].severity == "error"
    assert broken["005.png"].status == "error" and "first frame is 64x96" in broken["005.png"].error
    assert [broken[f"00{i}.png"].status for i in (1, 2, 4, 6)] == ["ok", "ok", "error", "error"]
    # 004 and 006 are isolated between unreadable frames: motion needs two consecutive readable frames
    assert "motion needs two" in broken["004.png"].error
    single = by_clip["d_single"]
    assert len(single) == 1 and single[0].status == "error" and "one readable frame" in single[0].error


def test_empty_clip_folder_cannot_be_fitted(tmp_path):
    (tmp_path / "nothing").mkdir()
    with pytest.raises(EmptyFolderError, match="no frames"):
        list_clips(tmp_path / "nothing")
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "001.png").write_bytes(b"broken")
    with pytest.raises(EmptyFolderError, match="only"):  # its one frame is unreadable: nothing to fit on
        detector().fit(tmp_path / "only")


def test_cli_fit_predict_bench(tmp_path, capsys):
    from normalcy.apps.cli import EXIT_OK, main

    data = tmp_path / "walkway"
    for c in normal_clips(6, 30):
        write_clip(data / "train" / c.name, c.frames)
    clip, labels = speeding_clip()
    write_clip(data / "test" / "t1", clip.frames)
    (data / "labels.csv").write_text("clip,frame,label\n" + "".join(f"t1,{i + 1},{y}\n" for i, y in enumerate(labels)))
    model = tmp_path / "m.normalcy"
    params = ["--param", "motion=diff", "--param", f"frame_height={H}", "--param", "cell=8", "--param", "top_k=4",
              "--param", "smooth=3", "--param", "lookahead=0", "--param", "alpha=0.05"]
    assert main(["fit", str(data / "train"), "-o", str(model), "--detector", "video", *params]) == EXIT_OK
    out = tmp_path / "out"
    assert main(["predict", str(model), str(data / "test"), "-o", str(out)]) == EXIT_OK
    import csv

    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["frame"] for r in rows] == [f"{i + 1:03d}.png" for i in range(40)]
    assert {r["clip"] for r in rows} == {"t1"}
    assert all(r["severity"] in ("normal", "suspicious") for r in rows[:20])
    assert rows[35]["is_anomaly"] == "True" and rows[35]["regions"] != "[]"
    strips = list((out / "segments").glob("t1_*.png"))
    assert len(strips) >= 1
    capsys.readouterr()
    assert main(["bench", str(data), "--detector", "video", *params]) == EXIT_OK
    table = capsys.readouterr().out
    assert "| video" in table and "frame AUROC pooled" in table


@pytest.mark.skipif(opencv() is None, reason="OpenCV (opencv-python-headless, normalcy[video]) is not installed")
def test_video_file_is_read_frame_by_frame(tmp_path):
    cv2 = opencv()
    path = tmp_path / "cam.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (W, H))
    clip, _ = speeding_clip()
    for f in clip.frames:
        writer.write(np.ascontiguousarray(f[..., ::-1]))
    writer.release()
    [video] = list_clips(path)
    assert video.name == "cam" and video.video == path
    det = detector().fit(normal_clips())
    preds = det.predict(path)
    assert len(preds) == len(clip.frames) and all(p.status == "ok" for p in preds)
    assert preds[0].path == "1" and preds[-1].anomaly_map.shape == (H, W)
