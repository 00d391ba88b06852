"""What the service keeps of one scored image besides its decision: input hash, image statistics, thumbnail, mask."""

from __future__ import annotations

import hashlib
import io
from typing import Any

import numpy as np
from PIL import Image

from normalcy.calibration.drift import image_statistics

THUMB_SIDE = 192  # longest side of the stored thumbnail (JPEG)
HISTORY_KEY = "_history"  # private key of a result row that carries these extras from the worker to the recorder


def capture(data: bytes, image: np.ndarray | None = None, mask: np.ndarray | None = None, *,
            pictures: bool = True, keep_input: bool = False) -> dict[str, Any]:
    """History extras of one upload: sha256 and size of the bytes; for a decoded image, brightness and sharpness
    (drift), with `pictures` a JPEG thumbnail and (when something is masked) the 1-bit PNG mask, and with
    `keep_input` the uploaded bytes themselves, all as bytes for the writer to store as files."""
    out: dict[str, Any] = {"input_sha256": hashlib.sha256(data).hexdigest(), "input_bytes": len(data)}
    if image is None:
        return out
    if keep_input:
        out["input"] = data
    if min(image.shape[:2]) >= 3:  # smaller images have no Laplacian: no drift statistics, the row is still kept
        out["brightness"], out["sharpness"] = image_statistics(image)
    if not pictures:
        return out
    thumb = Image.fromarray(image)
    thumb.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    thumb.convert("RGB").save(buf, format="JPEG", quality=85)
    out["thumb"] = buf.getvalue()
    if mask is not None and np.any(mask):
        buf = io.BytesIO()
        Image.fromarray(np.asarray(mask, dtype=bool)).save(buf, format="PNG", optimize=True)
        out["mask"] = buf.getvalue()
    return out
