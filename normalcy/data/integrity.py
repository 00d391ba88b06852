"""Detect image files that decode "successfully" although their data ends early (Pillow fills the rest silently).

* PNG: the compressed IDAT stream must reach its end (zlib end-of-stream); a cut stream leaves black rows.
* JPEG: libjpeg fills the blocks after a premature end marker with zero coefficients, i.e. flat grey 128; the
  last block of the scan (bottom-right MCU) is therefore exactly (128, 128, 128) in a truncated file. A real
  photo practically never has an exactly uniform 128 final block; a synthetic flat-grey image can, and is
  refused with a message that says why (re-save it as PNG). Truncated *progressive* JPEGs whose first scan is
  complete decode to a blurred image and cannot be told apart from a soft photo: that case is not detected.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PIECE = 1 << 20  # decompressed bytes produced per step: the check never holds the whole image


def png_stream_complete(data: bytes) -> bool:
    """True if the PNG's IDAT chunks are intact and hold a complete zlib stream (no early end of data)."""
    if not data.startswith(PNG_SIGNATURE):
        return True  # not a PNG: nothing to say
    pos, idat = len(PNG_SIGNATURE), zlib.decompressobj()
    seen_idat = False
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        start, end = pos + 8, pos + 8 + length
        if end + 4 > len(data):
            return False  # a chunk runs past the end of the file
        if kind == b"IDAT":
            seen_idat = True
            piece = data[start:end]
            try:
                while piece and not idat.eof:
                    idat.decompress(piece, _PIECE)
                    piece = idat.unconsumed_tail
            except zlib.error:
                return False
        elif kind == b"IEND":
            break
        pos = end + 4
    return seen_idat and idat.eof


def jpeg_tail_missing(img: Image.Image) -> bool:
    """True if a (loaded, not yet rotated) JPEG's last MCU is exactly the flat grey libjpeg substitutes."""
    layer = getattr(img, "layer", None) or [(1, 1, 1, 0)]
    mcu_w = 8 * max(int(c[1]) for c in layer)
    mcu_h = 8 * max(int(c[2]) for c in layer)
    w, h = img.size
    y0, x0 = ((h - 1) // mcu_h) * mcu_h, ((w - 1) // mcu_w) * mcu_w
    # with subsampled chroma, the decoder's smooth upsampling blends the first pixel row/column of an MCU with its
    # neighbour: only the rest of the MCU is exactly grey
    x0 += int(mcu_w > 8 and w - x0 > 1)
    y0 += int(mcu_h > 8 and h - y0 > 1)
    return bool(np.all(np.asarray(img.crop((x0, y0, w, h))) == 128))


def truncation_problem(img: Image.Image, data: bytes | None) -> str:
    """Why a decoded image is incomplete ("" when it looks whole); `img` must already be loaded."""
    fmt = (img.format or "").upper()
    if fmt == "PNG" and data is not None and not png_stream_complete(data):
        return "its PNG pixel data ends early (truncated or damaged file); the missing rows would read as black"
    if fmt in ("JPEG", "MPO") and img.mode in ("L", "RGB") and jpeg_tail_missing(img):
        return ("its JPEG data ends early: the last block is the flat grey (128) that the decoder substitutes for "
                "missing data (if the image really ends in flat grey, save it as PNG)")
    return ""
