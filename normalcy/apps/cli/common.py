"""Options and helpers shared by several commands (exit codes, detector parameters, explain options)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_ERROR, EXIT_SOME_FAILED = 0, 2, 3


def parse_param(text: str) -> tuple[str, Any]:
    """`key=value` with the value read as JSON when possible (numbers, lists, true/false/null)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--param expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    if isinstance(value, list):
        value = tuple(value)
    return key.strip().replace("-", "_"), value


def detector_params(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword parameters for a detector from the common options."""
    params = dict(args.param or [])
    for opt in ("image_size", "alpha", "backbone", "weights", "resize_mode"):
        value = getattr(args, opt, None)
        if value is not None:
            params[opt] = value
    return params


def _type_problem(value: Any, default: Any) -> str | None:
    """What is wrong with `value` for a parameter whose default is `default` (None when it fits)."""
    if default is None or value is None:
        return None
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "true or false"
    if isinstance(default, int):
        return None if isinstance(value, int) and not isinstance(value, bool) else "a whole number"
    if isinstance(default, float):
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) else "a number"
    if isinstance(default, str):
        return None if isinstance(value, str) else "text"
    if isinstance(default, (tuple, list)):
        return None if isinstance(value, (tuple, list)) else "a list such as [1,2]"
    return None


def build_detector(name: str, params: dict[str, Any]) -> Any:
    """A detector from command-line parameters, checked against its `get_params()` names and default types first.

    A typo or a badly typed value becomes one ParameterError naming the parameter and the valid names, instead of a
    TypeError deep inside the detector.
    """
    import difflib

    from normalcy.detectors import detector_class
    from normalcy.errors import ParameterError

    cls = detector_class(name)
    defaults = cls().get_params()
    for key, value in params.items():
        if key not in defaults:
            close = difflib.get_close_matches(key, defaults, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ParameterError(f"--param {key}: {name} has no parameter {key!r}; {hint}"
                                 f"valid names: {', '.join(sorted(defaults))}")
        problem = _type_problem(value, defaults[key])
        if problem is not None:
            raise ParameterError(f"--param {key}={json.dumps(value)}: {name} expects {problem} "
                                 f"(default {defaults[key]!r})")
    try:
        return cls(**params)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ParameterError):
            raise
        raise ParameterError(f"{name}: invalid parameters {params}: {exc}") from None


def add_detector_options(p: argparse.ArgumentParser, detector_default: str = "patchcore") -> None:
    """--detector, image size/resize/backbone/weights and free --param KEY=VALUE."""
    p.add_argument("--detector", default=detector_default, help="registered detector name(s), comma separated")
    p.add_argument("--image-size", type=int, help="square network input size (default 256)")
    p.add_argument("--resize-mode", choices=("aspect", "stretch", "pad"),
                   help="how images are fitted to the network input (patchcore/padim default: aspect)")
    p.add_argument("--backbone", help="backbone name (default: the detector's own; patchcore efficientnet_lite2, "
                                      "the others efficientnet_lite0)")
    p.add_argument("--weights", help="local backbone weights file (.pth/.safetensors); never downloaded")
    p.add_argument("--param", action="append", type=parse_param, metavar="KEY=VALUE",
                   help="any other detector parameter, e.g. --param coreset_ratio=0.05 (repeatable)")


def add_explain_options(p: argparse.ArgumentParser) -> None:
    """--gallery and the optional narrator endpoint."""
    p.add_argument("--gallery", help="folder of labelled defects (type-named subfolders or an MVTec category): "
                                     "name the nearest known defect type of each region")
    p.add_argument("--narrator-url", help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8080/v1: ask it to "
                                          "describe each flagged image (optional; failures are recorded)")
    p.add_argument("--narrator-model", help="model name sent to the narrator endpoint")
    p.add_argument("--narrator-timeout", type=float, default=30.0, help="seconds per narrator call (default 30)")


def explain_args(args: argparse.Namespace) -> dict[str, Any]:
    """The gallery folder and narrator client asked for on the command line (both optional)."""
    from normalcy.explain.narrator import Narrator

    out: dict[str, Any] = {}
    if args.gallery:
        out["gallery"] = args.gallery
    if args.narrator_url:
        out["narrator"] = Narrator(args.narrator_url, args.narrator_model or "", timeout=args.narrator_timeout)
    return out


def ensure_writable(*paths: str | Path | None, folder: bool = False) -> None:
    """Fail before any long computation when an output cannot be written (its folder cannot be made or written to).

    Raises the OSError that `main` turns into one line and exit 2; `folder=True` means the paths are folders.
    """
    import errno
    import os

    for raw in paths:
        if raw is None:
            continue
        target = Path(raw) if folder else Path(raw).parent
        target.mkdir(parents=True, exist_ok=True)
        if not os.access(target, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "Permission denied", str(target))


def normal_images_of(data: Path) -> list:
    """The normal training images of `data`: `train/good` of one MVTec category, else the folder's images."""
    from normalcy.data import find_categories, load_folder
    from normalcy.errors import LayoutError, PathNotFoundError

    if not data.exists():
        raise PathNotFoundError(f"{data} does not exist")
    if (data / "train" / "good").is_dir():
        return load_folder(data / "train" / "good")
    try:
        cats = find_categories(data)
    except LayoutError:
        return load_folder(data)
    raise LayoutError(f"{data} holds {len(cats)} categories ({', '.join(c.name for c in cats[:5])}…); "
                      "fit one category folder at a time")
