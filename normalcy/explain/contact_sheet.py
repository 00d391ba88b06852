"""Contact sheets: a grid of crops around defect regions, one PNG per cluster, for people to eyeball a group."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

THUMB = 128  # side of each square tile
CAPTION = 14  # caption strip height under each tile
MARGIN = 0.5  # context around the box, as a fraction of its size on each side
MIN_CROP = 48  # crops are at least this many pixels wide and high (tiny regions keep some context)


@dataclass
class Tile:
    """One crop to draw: the image file, the region box [x0, y0, x1, y1] and a short caption."""

    path: str
    box: Sequence[int]
    caption: str = ""


def crop_box(box: Sequence[int], shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """The box grown by MARGIN on each side (at least MIN_CROP), made square, clipped to the image."""
    x0, y0, x1, y1 = box
    h, w = shape
    side = max(MIN_CROP, int(round(max(x1 - x0, y1 - y0) * (1 + 2 * MARGIN))))
    side = min(side, max(h, w))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left = int(np.clip(round(cx - side / 2), 0, max(0, w - side)))
    top = int(np.clip(round(cy - side / 2), 0, max(0, h - side)))
    return left, top, min(w, left + side), min(h, top + side)


def _tile(tile: Tile) -> Image.Image:
    from normalcy.data import as_rgb_array

    img = as_rgb_array(tile.path)
    left, top, right, bottom = crop_box(tile.box, img.shape[:2])
    crop = Image.fromarray(img[top:bottom, left:right]).resize((THUMB, THUMB), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(crop)
    sx, sy = THUMB / max(1, right - left), THUMB / max(1, bottom - top)
    x0, y0, x1, y1 = tile.box
    draw.rectangle([(x0 - left) * sx, (y0 - top) * sy, (x1 - left) * sx - 1, (y1 - top) * sy - 1],
                   outline=(0, 255, 255))
    return crop


def contact_sheet(tiles: Sequence[Tile], path: Path, columns: int = 8, title: str = "") -> Path:
    """Write a PNG grid of region crops (box outlined in cyan, caption below each) to `path`."""
    columns = max(1, min(columns, len(tiles) or 1))
    rows = max(1, -(-len(tiles) // columns))
    head = CAPTION + 4 if title else 0
    sheet = Image.new("RGB", (columns * THUMB, head + rows * (THUMB + CAPTION)), (32, 32, 32))
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((4, 2), title, fill=(255, 255, 255))
    for i, tile in enumerate(tiles):
        x, y = (i % columns) * THUMB, head + (i // columns) * (THUMB + CAPTION)
        sheet.paste(_tile(tile), (x, y))
        if tile.caption:
            draw.text((x + 2, y + THUMB + 1), tile.caption[:20], fill=(220, 220, 220))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path
