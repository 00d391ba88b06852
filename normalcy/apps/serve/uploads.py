"""Uploaded bytes → checked image: type by content (magic bytes + Pillow), pixel count before decoding, then RGB."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from PIL import Image

from normalcy.data.images import ALLOWED_FORMATS
from normalcy.data.integrity import truncation_problem
from normalcy.errors import CorruptImageError, plain_reason

# Formats accepted (the same set normalcy reads from folders), recognised by their first bytes, never by name.
FORMATS: dict[str, str] = {"PNG": "image/png", "JPEG": "image/jpeg", "BMP": "image/bmp", "TIFF": "image/tiff",
                           "WEBP": "image/webp"}
assert set(FORMATS) == set(ALLOWED_FORMATS), "the service and the file reader accept the same formats"
SNIFF_BYTES = 16


class UploadRejected(Exception):
    """A file breaks a limit: the whole request is refused with `status` and a message naming limit and value."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass
class UploadInfo:
    """What the header says about one accepted upload (before any pixel is decoded)."""

    format: str
    width: int | None = None
    height: int | None = None
    header_error: str = ""  # the type is right but even the header is broken: reported as that image's error


def sniff_format(head: bytes) -> str | None:
    """The image format named by the leading magic bytes, or None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"BM"):
        return "BMP"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "TIFF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


def _open(fp: BinaryIO, fmt: str) -> Image.Image:
    """Open (header only) with Pillow restricted to the sniffed format."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own pixel limit applies instead
        return Image.open(fp, formats=[fmt])


def inspect_upload(fp: BinaryIO, name: str, max_pixels: int) -> UploadInfo:
    """Check type by content and pixel count from the header; raise UploadRejected (415/413) on a broken limit."""
    fp.seek(0)
    head = fp.read(SNIFF_BYTES)
    fmt = sniff_format(head)
    if fmt is None:
        what = "an empty file" if not head else f"content starting with {head[:8]!r}"
        raise UploadRejected(
            415, f"{name!r} is not a supported image type: got {what}; accepted by content: "
                 f"{', '.join(FORMATS)} (the file name is not looked at)")
    fp.seek(0)
    try:
        img = _open(fp, fmt)
    except Image.DecompressionBombError as exc:
        raise UploadRejected(413, f"{name!r} exceeds the pixel limit max_pixels={max_pixels}: {exc}") from None
    except Exception as exc:  # right magic bytes but an unreadable header: that image's own error, not the batch's
        return UploadInfo(fmt, header_error=f"corrupt {fmt} file, header unreadable ({plain_reason(exc)})")
    width, height = img.size
    del img  # not img.close(): Pillow would close the caller's upload file too
    if width * height > max_pixels:
        raise UploadRejected(
            413, f"{name!r} is {width}x{height} = {width * height} pixels, above the limit max_pixels={max_pixels} "
                 "(decompression-bomb guard); downscale or crop it")
    return UploadInfo(fmt, width, height)


def decode_upload(data: bytes, fmt: str) -> np.ndarray:
    """Decode checked bytes to H×W×3 uint8 with normalcy's usual conversions; CorruptImageError if broken."""
    from normalcy.data import as_rgb_array

    try:
        img = _open(io.BytesIO(data), fmt)
        img.load()
    except Exception as exc:  # truncated or damaged pixel data
        raise CorruptImageError(f"corrupt or truncated {fmt} data, cannot be decoded ({plain_reason(exc)})") from None
    problem = truncation_problem(img, data)
    if problem:
        raise CorruptImageError(f"truncated {fmt} file: {problem}")
    return as_rgb_array(img)
