"""Video clips: a folder of frames per clip (any image format normalcy reads), or video files when OpenCV is installed.

A clip is an ordered list of frames. `list_clips(root)` accepts a folder whose images are one clip, a folder of clip
folders (one clip per sub-folder, sorted by name), or video files (.mp4, .avi, ...: decoded with OpenCV's
`cv2.VideoCapture`, from the optional `opencv-python-headless` package; without it a video file is a clear error).
Frames are read lazily, one at a time, so memory stays bounded however long the clip is.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from normalcy.errors import DataError, EmptyFolderError, MissingDependencyError, ParameterError, PathNotFoundError

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg", ".webm")


@dataclass
class Clip:
    """One clip: a name, and its frames as image paths or arrays (`video` set instead for a video file)."""

    name: str
    frames: Iterable[Any] = field(default_factory=list)  # a list, or a live iterator read once (streaming)
    video: Path | None = None
    source: Path | None = None


@dataclass
class Frame:
    """One decoded frame (H×W×3 uint8) or the reason it could not be read."""

    index: int
    name: str
    image: np.ndarray | None = None
    error: str = ""


def is_video_file(path: Path) -> bool:
    """True for a file with a known video suffix."""
    return path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES


def _clip_from_folder(folder: Path) -> Clip:
    from normalcy.data.images import image_files

    return Clip(folder.name, list(image_files(folder)), source=folder)


def list_clips(root: str | Path) -> list[Clip]:
    """The clips under `root`: its own frames, its sub-folders' frames, or its video files (see module doc)."""
    from normalcy.data.images import image_files

    root = Path(root)
    if not root.exists():
        raise PathNotFoundError(f"{root} does not exist; give a folder of frames, a folder of clip folders or a video")
    if root.is_file():
        if root.suffix.lower() in VIDEO_SUFFIXES:
            return [Clip(root.stem, video=root, source=root)]
        raise DataError(f"{root}: not a clip; give a folder of frames or a video file ({', '.join(VIDEO_SUFFIXES)})")
    if image_files(root):
        return [_clip_from_folder(root)]
    entries = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    clips = [_clip_from_folder(p) if p.is_dir() else Clip(p.stem, video=p, source=p)
             for p in entries if p.is_dir() or is_video_file(p)]
    if not clips:
        raise EmptyFolderError(f"{root} holds no frames, no clip folders and no video files "
                               f"({', '.join(VIDEO_SUFFIXES)})")
    return clips


def as_clips(X: Any) -> list[Clip]:
    """Accept a folder or video path, a Clip, a T×H×W(×3) array (one clip), or a sequence of these."""
    if isinstance(X, Clip):
        return [X]
    if isinstance(X, (str, Path)):
        return list_clips(X)
    if isinstance(X, np.ndarray):
        if X.ndim not in (3, 4):
            raise ParameterError(f"a clip array must be T×H×W or T×H×W×3, got shape {X.shape}")
        return [Clip("clip", list(X))]
    items = list(X)
    if not items:
        raise EmptyFolderError("no clips were given")
    if all(isinstance(it, np.ndarray) and it.ndim in (2, 3) for it in items):
        return [Clip("clip", items)]  # a list of frames is one clip
    out: list[Clip] = []
    for it in items:
        out.extend(as_clips(it))
    return out


def _to_rgb(frame: Any) -> np.ndarray:
    from normalcy.data.images import as_rgb_array

    return as_rgb_array(frame)


def _video_frames(path: Path) -> Iterator[Frame]:
    try:
        import cv2
    except ImportError:
        raise MissingDependencyError(f"{path}: reading video files needs OpenCV: pip install 'normalcy[video]' "
                                     "(opencv-python-headless), or give a folder of frames") from None
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise DataError(f"{path}: OpenCV cannot open this video (unsupported codec or damaged file)")
    try:
        i = 0
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            yield Frame(i, str(i + 1), np.ascontiguousarray(bgr[..., ::-1]))
            i += 1
    finally:
        cap.release()


def iter_frames(clip: Clip) -> Iterator[Frame]:
    """The clip's frames in order; an unreadable frame, or one whose size differs from the first, is an error."""
    if clip.video is not None:
        frames: Iterable[Frame] = _video_frames(clip.video)
    else:
        frames = (_read(i, Path(f).name if isinstance(f, (str, Path)) else str(i + 1), f)
                  for i, f in enumerate(clip.frames))
    shape = None
    for fr in frames:
        if fr.image is not None:
            if shape is None:
                shape = fr.image.shape[:2]
            elif fr.image.shape[:2] != shape:
                fr = Frame(fr.index, fr.name, None, f"frame is {fr.image.shape[0]}x{fr.image.shape[1]} but the clip's "
                                                   f"first frame is {shape[0]}x{shape[1]}; a clip needs one frame size")
        yield fr


def _read(i: int, name: str, item: Any) -> Frame:
    try:
        return Frame(i, name, _to_rgb(item))
    except DataError as exc:
        return Frame(i, name, None, str(exc))
