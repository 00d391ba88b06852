"""Read images and masks into plain numpy arrays, with one clear error naming the file per kind of bad input.

Conversions, shared by `read_image` and `as_rgb_array` so every entry point sees the same pixels:

* grayscale (1, L) is repeated into 3 channels;
* 16-bit data (I;16*, and I, which is how Pillow may open 16-bit PNG/TIFF) is scaled to 8 bits by the
  dtype maximum 65535 -- never by the image's own min/max, which would stretch a faint defect into a
  strong one and make images incomparable;
* float data (F mode, float arrays) must lie in [0, 1] for arrays; F-mode files use the smallest fixed
  range of [0, 1], [0, 255], [0, 65535] that holds them;
* alpha (RGBA, LA, PA, palette with transparency) is dropped after converting to RGB: the stored colour
  is kept as is, not composited onto a background;
* CMYK, YCbCr, LAB, HSV are converted to RGB by Pillow;
* the EXIF orientation tag is applied, so pixels are upright as a photo viewer shows them.
"""

from __future__ import annotations

import io
import itertools
import os
import stat
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from normalcy.data.integrity import truncation_problem
from normalcy.data.samples import Sample
from normalcy.errors import (
    CorruptImageError,
    DataError,
    EmptyFolderError,
    LayoutError,
    MaskMismatchError,
    ParameterError,
    PathNotFoundError,
    ShapeError,
    plain_reason,
)

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# Raster formats Pillow may decode, by content. Everything else (PostScript/EPS via Ghostscript, PDF, ...) is refused
# whatever the file is called: an allowlist, so no external program or exotic decoder is ever reached.
ALLOWED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "BMP", "TIFF", "WEBP")
_DECODED_AS = frozenset(ALLOWED_FORMATS) | {"MPO"}  # Pillow's JPEG opener names multi-picture camera JPEGs MPO
MAX_MEGAPIXELS = 100
_MAX_PIXELS = MAX_MEGAPIXELS * 1_000_000
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_ALPHA_LAST_MODES = frozenset({"LA", "La", "RGBA"})
_VIA_RGBA_MODES = frozenset({"P", "PA", "RGBa"})

PathLike = str | os.PathLike


# --- paths and folders ----------------------------------------------------------------------------------
def _full(path: PathLike) -> Path:
    """Absolute, user-expanded path, so every error message names the file unambiguously."""
    return Path(path).expanduser().absolute()


def is_image_file(path: PathLike) -> bool:
    """True if the name has an image extension (any case) and is not hidden (skips macOS `._x.png`)."""
    name = Path(path).name
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS


def _require_dir(folder: PathLike) -> Path:
    """Return the folder as an absolute path, or raise PathNotFoundError / LayoutError saying what's wrong."""
    path = _full(folder)
    if not path.exists():
        raise PathNotFoundError(f"folder not found: {path}")
    if not path.is_dir():
        raise LayoutError(f"{path} is a file, not a folder; pass the folder that holds the images")
    return path


def _visible_entries(folder: Path) -> list[os.DirEntry]:
    """Non-hidden entries of one folder (hidden ones are OS/editor litter such as .DS_Store)."""
    with os.scandir(folder) as entries:
        return [e for e in entries if not e.name.startswith(".")]


def _files_in(folder: Path, recursive: bool) -> list[Path]:
    """All visible files under the folder; recursion skips hidden folders and does not follow symlinks."""
    if not recursive:
        return [folder / e.name for e in _visible_entries(folder) if e.is_file()]
    found = []
    for here, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found.extend(Path(here) / f for f in files if not f.startswith("."))
    return found


def _has_subfolders(folder: Path) -> bool:
    """True if the folder has at least one visible sub-folder."""
    return any(e.is_dir() for e in _visible_entries(folder))


def _empty_message(folder: Path, files: list[Path], recursive: bool) -> str:
    """Explain why a folder yielded no image: empty, other file types, or images only in sub-folders."""
    where = "in or below" if recursive else "in"
    msg = f"no image files {where} {folder} (looked for {', '.join(IMAGE_EXTENSIONS)}, any case)"
    if files:
        msg += f"; it holds {len(files)} other file(s), e.g. {files[0].name!r}"
    else:
        msg += "; the folder is empty"
    if not recursive and _has_subfolders(folder):
        msg += "; it has sub-folders -- pass recursive=True to search them"
    return msg


def image_files(folder: Path) -> list[Path]:
    """Sorted image files directly in an existing folder, possibly none (no error: callers decide)."""
    return sorted(p for p in _files_in(folder, recursive=False) if is_image_file(p))


def list_images(folder: PathLike, recursive: bool = False) -> list[Path]:
    """Sorted image files in a folder, so datasets load in a stable order; raises if there are none."""
    root = _require_dir(folder)
    files = _files_in(root, recursive)
    images = sorted(p for p in files if is_image_file(p))
    if not images:
        raise EmptyFolderError(_empty_message(root, files, recursive))
    return images


def iter_batches(items: Iterable[Any], batch_size: int) -> Iterator[list]:
    """Chunk a sequence into lists of at most `batch_size` items, so callers can bound memory per step."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) or batch_size < 1:
        raise ParameterError(f"batch_size must be a positive integer, got {batch_size!r}")
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, int(batch_size))):
        yield batch


# --- decoding files -------------------------------------------------------------------------------------
def _check_pixel_count(size: tuple[int, int], name: object, max_pixels: int = _MAX_PIXELS) -> None:
    """Refuse images above the pixel cap before decoding them (decompression-bomb guard)."""
    width, height = size
    if width * height > max_pixels:
        raise CorruptImageError(
            f"{name} is {width}x{height} = {width * height / 1e6:.0f} megapixels, above the "
            f"{max_pixels / 1e6:g}-megapixel limit (decompression-bomb guard); downscale or crop it first"
        )


def _upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag; a malformed EXIF block is ignored rather than failing the image."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # broken metadata must not make valid pixels unreadable
        return img


def _read_regular_file(path: Path) -> bytes:
    """The bytes of a regular file, read once; a missing file, folder, FIFO or device is a DataError naming it.

    The file is opened non-blocking and checked with fstat on the open descriptor, so a named pipe can never
    block the reader and a file replaced between listing and reading is judged by what was actually opened.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise PathNotFoundError(f"image file not found: {path} (deleted or moved?)") from None
    except IsADirectoryError:
        raise CorruptImageError(f"{path} is a folder, not an image file") from None
    except PermissionError:
        raise CorruptImageError(f"{path} cannot be read: permission denied") from None
    except OSError as exc:
        raise CorruptImageError(f"{path} cannot be opened ({exc.strerror or type(exc).__name__})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        if stat.S_ISDIR(mode):
            raise CorruptImageError(f"{path} is a folder, not an image file")
        raise CorruptImageError(f"{path} is not a regular file (a pipe, socket or device); only files are read")
    with os.fdopen(fd, "rb") as f:
        try:
            return f.read()
        except OSError as exc:
            raise CorruptImageError(f"{path} cannot be read ({exc.strerror or type(exc).__name__})") from None


def _check_format(img: Image.Image, name: object) -> None:
    """Refuse any format outside ALLOWED_FORMATS (Pillow was already limited to them when opening a file)."""
    if img.format is not None and img.format.upper() not in _DECODED_AS:
        raise CorruptImageError(
            f"{name} is a {img.format} file; normalcy reads only raster images "
            f"({', '.join(ALLOWED_FORMATS)}) -- convert it to PNG"
        )


def _decode_failure(path: Path, exc: Exception) -> CorruptImageError:
    """Translate whatever Pillow raised for a bad file into one CorruptImageError naming the file."""
    if isinstance(exc, Image.DecompressionBombError):
        return CorruptImageError(
            f"{path} is too large to decode safely ({plain_reason(exc)}); normalcy reads images up to "
            f"{MAX_MEGAPIXELS} megapixels (decompression-bomb guard) -- downscale or crop it first"
        )
    if isinstance(exc, UnidentifiedImageError):
        return CorruptImageError(
            f"{path} is not a supported raster image ({', '.join(ALLOWED_FORMATS)}, "
            "recognised by content; the name does not count); re-export it as PNG or remove it from the folder"
        )
    if isinstance(exc, PermissionError):
        return CorruptImageError(f"{path} cannot be read: permission denied")
    return CorruptImageError(
        f"{path} is corrupt or truncated and cannot be decoded ({plain_reason(exc)}); re-export or remove the file"
    )


def _decode_bytes(data: bytes, path: Path, max_pixels: int = _MAX_PIXELS) -> Image.Image:
    """Fully decode one file's bytes (upright); every failure, truncation included, is a DataError naming it."""
    try:
        with warnings.catch_warnings():
            # Our own pixel cap replaces Pillow's lower default warning threshold.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as img:
                _check_pixel_count(img.size, path, max_pixels)
                img.load()
                problem = truncation_problem(img, data)
                if problem:
                    raise CorruptImageError(f"{path} is truncated: {problem}; re-export or remove the file")
                upright = _upright(img)
                # Closing the file also discards the pixels of `img` itself, so keep an independent copy.
                return upright.copy() if upright is img else upright
    except DataError:
        raise
    except Exception as exc:  # any decoder failure means a bad file, reported as such
        raise _decode_failure(path, exc) from None


def _open_decoded(path: Path, max_pixels: int = _MAX_PIXELS) -> Image.Image:
    """Read a file once and fully decode it (see `_decode_bytes`)."""
    return _decode_bytes(_read_regular_file(path), path, max_pixels)


def _pixel_cap(max_megapixels: float | None) -> int:
    """The per-image pixel cap in pixels (MAX_MEGAPIXELS when None), validated."""
    if max_megapixels is None:
        return _MAX_PIXELS
    if isinstance(max_megapixels, bool) or not isinstance(max_megapixels, int | float) or not max_megapixels > 0:
        raise ParameterError(f"max_megapixels must be a number > 0, got {max_megapixels!r}")
    return int(float(max_megapixels) * 1_000_000)


# --- pixel conversions ----------------------------------------------------------------------------------
def _scale_16bit(values: np.ndarray) -> np.ndarray:
    """Map 0..65535 to 0..255 with rounding, by the dtype maximum (keeps contrast comparable)."""
    wide = np.clip(values, 0, 65535).astype(np.uint32)
    return ((wide * 255 + 32767) // 65535).astype(np.uint8)


def _unit_float_to_uint8(values: np.ndarray) -> np.ndarray:
    """Map floats in [0, 1] to 0..255 with rounding."""
    return np.rint(values.astype(np.float64) * 255.0).astype(np.uint8)


def _float_mode_to_uint8(values: np.ndarray, name: object) -> np.ndarray:
    """Scale an F-mode (32-bit float) image by the smallest fixed range holding it, never by its min/max."""
    if not np.all(np.isfinite(values)):
        raise CorruptImageError(f"{name} holds NaN or infinite pixel values; fix or re-export the file")
    values = np.clip(values, 0.0, None)
    top = float(values.max()) if values.size else 0.0
    if top <= 1.0:
        return _unit_float_to_uint8(values)
    if top <= 255.0:
        return np.rint(values).astype(np.uint8)
    return _scale_16bit(np.rint(values))


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    """Repeat one channel into three (contiguous, writable; np.stack is about 2× faster than np.repeat here)."""
    return np.stack((gray, gray, gray), axis=2)


def _pil_to_rgb(img: Image.Image, name: object) -> np.ndarray:
    """Convert a decoded Pillow image of any mode to H x W x 3 uint8 (see module docstring)."""
    mode = img.mode
    if mode == "RGB":
        return np.array(img, dtype=np.uint8)
    if mode == "1":
        return _gray_to_rgb(np.array(img).astype(np.uint8) * 255)
    if mode == "L":
        return _gray_to_rgb(np.array(img, dtype=np.uint8))
    if mode in _SIXTEEN_BIT_MODES:
        return _gray_to_rgb(_scale_16bit(np.array(img)))
    if mode == "F":
        return _gray_to_rgb(_float_mode_to_uint8(np.array(img), name))
    if mode in ("LA", "La"):
        return _gray_to_rgb(np.array(img)[:, :, 0])
    if mode == "RGBA":
        return np.ascontiguousarray(np.array(img)[:, :, :3])
    if mode in _VIA_RGBA_MODES:
        return np.ascontiguousarray(np.array(img.convert("RGBA"))[:, :, :3])
    try:
        return np.array(img.convert("RGB"), dtype=np.uint8)
    except Exception as exc:  # exotic modes Pillow cannot convert
        raise CorruptImageError(f"{name} has image mode {mode!r}, which cannot be converted to RGB") from exc


def read_image(path: PathLike, max_megapixels: float | None = None) -> np.ndarray:
    """Read an image file as H x W x 3 uint8 RGB, the one pixel format the rest of normalcy expects.

    `max_megapixels` caps width x height before decoding (default MAX_MEGAPIXELS).
    """
    full = _full(path)
    return _pil_to_rgb(_open_decoded(full, _pixel_cap(max_megapixels)), full)


# --- masks ----------------------------------------------------------------------------------------------
def _pil_to_mask(img: Image.Image) -> np.ndarray:
    """Defect where any colour channel is > 0 (alpha ignored), computed on raw values before any scaling."""
    if img.mode in _VIA_RGBA_MODES or img.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        img = img.convert("RGBA")
    values = np.array(img)
    if img.mode in _ALPHA_LAST_MODES:
        values = values[:, :, :-1]
    defect = values > 0
    return defect.any(axis=2) if defect.ndim == 3 else defect


def _check_mask_size(mask: np.ndarray, shape: tuple[int, ...], path: Path) -> None:
    """Raise MaskMismatchError if the mask is not exactly the expected height x width."""
    expected = tuple(int(n) for n in tuple(shape)[:2])
    if mask.shape != expected:
        raise MaskMismatchError(
            f"mask {path} is {mask.shape[0]}x{mask.shape[1]} pixels (height x width) but its image is "
            f"{expected[0]}x{expected[1]}; a mask must have exactly its image's size -- fix the pairing "
            "or resize the mask with nearest-neighbour interpolation"
        )


def read_mask(path: PathLike, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a ground-truth mask as bool H x W (pixel > 0 is defect); checks its size if `shape` is given."""
    full = _full(path)
    mask = _pil_to_mask(_open_decoded(full))
    if shape is not None:
        _check_mask_size(mask, shape, full)
    return mask


# --- arrays and in-memory images ------------------------------------------------------------------------
def _array_channels_to_rgb(values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Turn H x W / H x W x {1,3,4} uint8 values into H x W x 3 (alpha dropped, gray repeated)."""
    if values.ndim == 2:
        return _gray_to_rgb(values)
    if shape[2] == 1:
        return _gray_to_rgb(values[:, :, 0])
    return np.ascontiguousarray(values[:, :, :3])


def _check_array_shape(arr: np.ndarray) -> None:
    """Raise ShapeError unless the array is a non-empty H x W, H x W x 1, H x W x 3 or H x W x 4 image."""
    ok = arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (1, 3, 4))
    if not ok or arr.size == 0:
        raise ShapeError(
            f"array of shape {arr.shape} is not an image; expected a non-empty H x W, H x W x 1, "
            "H x W x 3 or H x W x 4 array"
        )


def _array_values_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Convert bool / uint8 / uint16 / float-in-[0,1] values to uint8; anything else is a ShapeError."""
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if arr.dtype == np.uint8:
        return np.array(arr, dtype=np.uint8)
    if arr.dtype == np.uint16:
        return _scale_16bit(arr)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise ShapeError(f"float image array of shape {arr.shape} contains NaN or infinite values")
        low, high = float(arr.min()), float(arr.max())
        if low < 0.0 or high > 1.0:
            raise ShapeError(
                f"float image array values must lie in [0, 1], got [{low:g}, {high:g}]; "
                "divide 0..255 data by 255 (or pass it as uint8)"
            )
        return _unit_float_to_uint8(arr)
    raise ShapeError(
        f"image array dtype {arr.dtype} is not supported; use uint8, uint16, bool or float in [0, 1] "
        "(e.g. arr.astype(np.uint8) for 0..255 integers)"
    )


def _array_to_rgb(arr: np.ndarray) -> np.ndarray:
    """Validate and convert a numpy image array to H x W x 3 uint8 (always a fresh array)."""
    _check_array_shape(arr)
    return _array_channels_to_rgb(_array_values_to_uint8(arr), arr.shape)


def _in_memory_to_rgb(img: Image.Image) -> np.ndarray:
    """Convert a PIL image object (maybe not yet decoded) with the same rules as a file."""
    name = getattr(img, "filename", "") or "in-memory PIL image"
    _check_format(img, name)
    try:
        _check_pixel_count(img.size, name)
        img.load()
    except DataError:
        raise
    except Exception as exc:  # a lazily opened image may still fail to decode here
        raise _decode_failure(Path(str(name)), exc) from exc
    return _pil_to_rgb(_upright(img), name)


def as_rgb_array(item: PathLike | Sample | Image.Image | np.ndarray) -> np.ndarray:
    """Turn a path, Sample, PIL image or numpy array into H x W x 3 uint8, so every API accepts them all."""
    if isinstance(item, Sample):
        return read_image(item.path)
    if isinstance(item, str | os.PathLike):
        return read_image(item)
    if isinstance(item, Image.Image):
        return _in_memory_to_rgb(item)
    if isinstance(item, np.ndarray):
        return _array_to_rgb(item)
    raise ShapeError(
        f"cannot read an image from a {type(item).__name__}; pass a path, a Sample, a PIL image "
        "or a numpy array"
    )
