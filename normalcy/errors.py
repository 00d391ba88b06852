"""Every error normalcy raises on purpose: one type per kind of problem, each message names the culprit."""

from __future__ import annotations

import re

_REPR = re.compile(r"<[^<>]*\bat 0x[0-9a-fA-F]+>|\bat 0x[0-9a-fA-F]+")


def plain_reason(exc: BaseException) -> str:
    """An exception's message for users: object reprs and memory addresses removed, never empty."""
    text = _REPR.sub("the data", str(exc)).strip()
    return text or type(exc).__name__


class NormalcyError(Exception):
    """Base class: catch this to handle any problem normalcy reports deliberately."""


# --- data -----------------------------------------------------------------------------------------------
class DataError(NormalcyError, ValueError):
    """Input data is unusable (the message names the file or argument)."""


class PathNotFoundError(DataError, FileNotFoundError):
    """A path given by the user does not exist."""


class EmptyFolderError(DataError):
    """A folder holds no usable images or rows."""


class LayoutError(DataError):
    """A folder does not have the expected layout (e.g. MVTec `train/good`)."""


class CorruptImageError(DataError):
    """An image file cannot be decoded (truncated, corrupt, or not an image)."""


class MaskMismatchError(DataError):
    """A ground-truth mask does not fit its image (size differs)."""


class MissingMaskError(DataError):
    """A defective test image has no mask although the set has masks."""


class ShapeError(DataError):
    """Arrays have the wrong shape, dtype or contain NaN/inf."""


# --- estimators -----------------------------------------------------------------------------------------
class NotFittedError(NormalcyError, AttributeError):
    """A detector was used before `fit` (same meaning as scikit-learn's NotFittedError)."""


class ParameterError(NormalcyError, ValueError):
    """A detector or command got an invalid parameter value."""


class TrainingError(NormalcyError, RuntimeError):
    """Training failed (e.g. NaN loss); the message says what state was kept."""


# --- backbones and model files --------------------------------------------------------------------------
class BackboneError(NormalcyError):
    """Unknown backbone name or a backbone that cannot be built."""


class WeightsNotFoundError(BackboneError, FileNotFoundError):
    """Backbone weights are not on this machine (normalcy never downloads them)."""


class WeightsMismatchError(BackboneError):
    """A weights file does not match the architecture (missing/unexpected keys, wrong shapes)."""


class ModelFileError(NormalcyError):
    """A saved model file is truncated, tampered with, from another format version, or not ours."""


# --- optional dependencies and clusters -----------------------------------------------------------------
class MissingDependencyError(NormalcyError, ImportError):
    """An optional package needed for the requested feature is not installed (the message names the extra)."""


class ClusterError(NormalcyError, ConnectionError):
    """A compute cluster cannot be reached or lost work it could not redo (the message names the address)."""
