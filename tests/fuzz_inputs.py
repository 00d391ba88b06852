"""Seeded generators of broken and hostile inputs for every input path, plus the checks that judge the outcome.

Used by tests/test_fuzz.py (a few dozen cases per path) and benchmarks/fuzz.py (thousands). Each generator is a
pure function of a numpy Generator, so a failing case is reproduced from its seed and index.
"""

from __future__ import annotations

import io
import json
import os
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

RASTER = ("PNG", "JPEG", "BMP", "TIFF", "WEBP")
EXT = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp", "TIFF": ".tif", "WEBP": ".webp"}


# ---- images ---------------------------------------------------------------------------------------------------
@dataclass
class ImageCase:
    """One generated input file: its name and bytes (or a special kind), and whether it must be an error row."""

    name: str
    data: bytes | None
    kind: str  # "file", "fifo", "dir", "symlink-dev"
    must_fail: bool  # known to be broken or not an image: scoring it as ok would be a silent wrong answer
    label: str


def encode(arr: np.ndarray, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kw)
    return buf.getvalue()


def random_image(rng: np.random.Generator, size: int = 32) -> np.ndarray:
    h, w = int(rng.integers(8, size + 1)), int(rng.integers(8, size + 1))
    return (rng.random((h, w, 3)) * 255).astype(np.uint8)


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    pos, out = 8, []
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        out.append((kind, data[pos + 8:pos + 8 + length]))
        pos += 12 + length
    return out


def _png_from_chunks(chunks: list[tuple[bytes, bytes]]) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + b"".join(
        struct.pack(">I4s", len(body), kind) + body + struct.pack(">I", zlib.crc32(kind + body))
        for kind, body in chunks)


def png_short_stream(data: bytes, keep: float) -> bytes:
    """Valid chunks and CRCs, but the compressed pixel stream cut to a fraction `keep`."""
    idat = b"".join(b for k, b in _png_chunks(data) if k == b"IDAT")
    cut = idat[: max(1, int(len(idat) * keep))]
    chunks = [(k, b) for k, b in _png_chunks(data) if k not in (b"IDAT", b"IEND")]
    return _png_from_chunks([*chunks, (b"IDAT", cut), (b"IEND", b"")])


def png_bomb_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (tiny file): must be refused before decoding."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return _png_from_chunks([(b"IHDR", ihdr), (b"IDAT", zlib.compress(b"\x00" * 64)), (b"IEND", b"")])


def image_case(rng: np.random.Generator, i: int) -> ImageCase:
    """The i-th generated image input (mutation chosen by the generator)."""
    fmt = RASTER[int(rng.integers(len(RASTER)))]
    arr = random_image(rng)
    good = encode(arr, fmt)
    ext = EXT[fmt]
    r = int(rng.integers(17))
    if r == 0:
        return ImageCase(f"{i}_good{ext}", good, "file", False, "good")
    if r == 1:  # cut anywhere (raw truncation)
        cut = int(rng.integers(0, len(good)))
        return ImageCase(f"{i}_cut{ext}", good[:cut], "file", True, "truncated")
    if r == 2:  # JPEG cut with an end marker appended
        jpg = encode(arr, "JPEG")
        cut = int(rng.integers(len(jpg) // 4, len(jpg) * 3 // 4))
        return ImageCase(f"{i}_jpegcut.jpg", jpg[:cut] + b"\xff\xd9", "file", True, "jpeg-cut-eoi")
    if r == 3:  # PNG whose compressed stream ends early, chunks intact
        png = encode(arr, "PNG")
        return ImageCase(f"{i}_pngshort.png", png_short_stream(png, float(rng.uniform(0.1, 0.9))), "file", True,
                         "png-short-stream")
    if r == 4:  # random byte flips: anything may happen, but rows must not be lost
        flipped = bytearray(good)
        for _ in range(int(rng.integers(1, 6))):
            p = int(rng.integers(0, len(flipped)))
            flipped[p] ^= 1 << int(rng.integers(0, 8))
        return ImageCase(f"{i}_flip{ext}", bytes(flipped), "file", False, "byte-flip")
    if r == 5:  # not an image at all, image name
        junk = [b"", b"hello world\n", rng.bytes(int(rng.integers(1, 300))),
                b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n",
                b"<svg xmlns='http://www.w3.org/2000/svg'/>", encode(arr, "GIF"), b"%PDF-1.4\n%%EOF\n"]
        return ImageCase(f"{i}_junk{ext}", junk[int(rng.integers(len(junk)))], "file", True, "not-an-image")
    if r == 6:  # magic bytes then garbage
        return ImageCase(f"{i}_magic{ext}", good[:16] + rng.bytes(int(rng.integers(0, 200))), "file", True,
                         "magic-then-garbage")
    if r == 7:  # decompression bomb header
        side = int(rng.integers(11_000, 60_000))
        return ImageCase(f"{i}_bomb.png", png_bomb_header(side, side), "file", True, "bomb-header")
    if r == 8:  # very long name
        return ImageCase(f"{i}_" + "n" * int(rng.integers(200, 240)) + ext, good, "file", False, "long-name")
    if r == 9:  # name with bytes that are not UTF-8
        return ImageCase(os.fsdecode(f"{i}_".encode() + bytes([0xFF, 0xFE, 0x80]) + ext.encode()), good, "file",
                         False, "non-utf8-name")
    if r == 10:  # spreadsheet formula name
        start = "=+-@"[int(rng.integers(4))]
        return ImageCase(f"{start}{i}cmd|' -C calc'!A0{ext}", good, "file", False, "formula-name")
    if r == 11:
        return ImageCase(f"{i}_fifo{ext}", None, "fifo", True, "fifo")
    if r == 12:
        return ImageCase(f"{i}_dir{ext}", None, "dir", False, "folder-named-like-an-image")
    if r == 13:
        return ImageCase(f"{i}_dev{ext}", None, "symlink-dev", True, "symlink-to-device")
    if r == 14:  # 16-bit, grey, alpha, palette: odd but valid modes
        mode_arr = [(arr[:, :, 0].astype(np.uint16) * 257), arr[:, :, 0], np.dstack([arr, arr[:, :, :1]])]
        pick = mode_arr[int(rng.integers(len(mode_arr)))]
        return ImageCase(f"{i}_mode.png", encode(pick, "PNG"), "file", False, "odd-mode")
    if r == 15:  # appended garbage after a complete image: decodes fine (what viewers show)
        return ImageCase(f"{i}_tail{ext}", good + rng.bytes(int(rng.integers(1, 100))), "file", False, "trailing-bytes")
    ihdr_1x1 = encode(np.zeros((1, 1, 3), np.uint8), fmt)  # smallest valid image
    return ImageCase(f"{i}_tiny{ext}", ihdr_1x1, "file", False, "1x1")


def materialize(case: ImageCase, folder: Path) -> Path:
    """Create the case on disk (file, FIFO, folder or symlink to /dev/zero); returns its path."""
    path = Path(os.fsdecode(os.fsencode(folder) + b"/" + os.fsencode(case.name)))
    if case.kind == "file":
        path.write_bytes(case.data or b"")
    elif case.kind == "fifo":
        os.mkfifo(path)
    elif case.kind == "dir":
        path.mkdir()
    elif case.kind == "symlink-dev":
        os.symlink("/dev/zero", path)
    return path


GOOD_LABELS = frozenset({"good", "long-name", "non-utf8-name", "formula-name", "odd-mode", "1x1"})


def check_predict_rows(out: Path, inputs: list[Path], cases: list[ImageCase]) -> dict[str, int]:
    """Judge one `predict` run: one row per input in both files, and no known-broken input scored as ok."""
    import csv

    tally = {"lost_rows": 0, "silent_wrong": 0, "inconsistent": 0, "good_refused": 0}
    with open(out / "results.csv", newline="", encoding="utf-8") as f:
        rows_csv = list(csv.DictReader(f))
    rows_json = [json.loads(line) for line in (out / "results.jsonl").read_text(encoding="utf-8").splitlines()]
    tally["lost_rows"] = max(0, len(inputs) - len(rows_json)) + max(0, len(inputs) - len(rows_csv))
    if len(rows_csv) != len(rows_json):
        tally["inconsistent"] += 1
    by_path = {r["path"]: r for r in rows_json}
    for case, path in zip(cases, inputs):
        shown = os.fsencode(path).decode("utf-8", "backslashreplace")
        row = by_path.get(shown)
        if row is None:
            continue  # counted as lost above when missing
        if row["status"] == "error" and (row["is_anomaly"] is not None or row["severity"] != "error"):
            tally["inconsistent"] += 1
        if case.must_fail and row["status"] == "ok":
            tally["silent_wrong"] += 1
        if case.label in GOOD_LABELS and row["status"] != "ok":
            tally["good_refused"] += 1
    for r in rows_csv:
        if r["path"][:1] in "=+-@\t\r":
            tally["inconsistent"] += 1  # a formula cell in results.csv
    return tally


# ---- model files ----------------------------------------------------------------------------------------------
def model_case(rng: np.random.Generator, data: bytes, meta_text: str) -> tuple[bytes, str]:
    """A damaged copy of a model file: byte flips (header or tensors), truncation, appended bytes, re-signed edits."""
    from normalcy.store import META_HASH_KEY, META_KEY, _text_digest

    header_len = int.from_bytes(data[:8], "little")
    r = int(rng.integers(6))
    if r == 0:  # one flip inside the JSON header
        pos = int(rng.integers(8, 8 + header_len))
        out = bytearray(data)
        out[pos] ^= 1 << int(rng.integers(8))
        return bytes(out), "header-flip"
    if r == 1:  # one flip in the tensor data
        pos = int(rng.integers(8 + header_len, len(data)))
        out = bytearray(data)
        out[pos] ^= 1 << int(rng.integers(8))
        return bytes(out), "tensor-flip"
    if r == 2:
        return data[: int(rng.integers(0, len(data)))], "truncated"
    if r == 3:
        return data + rng.bytes(int(rng.integers(1, 64))), "appended"
    if r == 4:  # header length field changed
        out = bytearray(data)
        out[:8] = int(rng.integers(0, 2**40)).to_bytes(8, "little")
        return bytes(out), "header-length"
    # re-signed metadata edits: the checksum matches, the content is wrong
    meta = json.loads(meta_text)
    edits: list[Callable[[dict], None]] = [
        lambda m: m.__setitem__("params", []),
        lambda m: m["params"].__setitem__("alpha", "x"),
        lambda m: m["params"].__setitem__("alpha", 5),
        lambda m: m["params"].__setitem__("image_size", -3.5),
        lambda m: m["params"].__setitem__("nope", 1),
        lambda m: m.__setitem__("detector", ["patchcore"]),
        lambda m: m.__setitem__("detector", "no-such-detector"),
        lambda m: m.pop("shapes"),
        lambda m: m.__setitem__("state", {"bank_file": "../../../etc/passwd", "bank_shape": [1, 1],
                                          "bank_sha256": "0" * 64}),
        lambda m: m.__setitem__("backbone", "x"),
        lambda m: m.__setitem__("format_version", True),
        lambda m: m.__setitem__("n_fit", "many"),
    ]
    edits[int(rng.integers(len(edits)))](meta)
    text = json.dumps(meta)
    return resign(data, {META_KEY: text, META_HASH_KEY: _text_digest(text)}), "resigned-edit"


def resign(data: bytes, metadata: dict[str, str]) -> bytes:
    """The same tensors with new safetensors metadata (a header rewritten by hand)."""
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + header_len])
    header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw + data[8 + header_len:]


def check_model_load(path: Path, original_meta: dict, original_arrays: dict) -> str:
    """"refused", "same" (loaded and identical to the original) or "silent-change"/"crash:<type>"."""
    from normalcy.errors import NormalcyError
    from normalcy.store import read_file

    try:
        import normalcy

        normalcy.load(path)
        meta, arrays = read_file(path)
    except NormalcyError:
        return "refused"
    except Exception as exc:  # noqa: BLE001 - anything untyped is what we count
        return f"crash:{type(exc).__name__}"
    same = meta == original_meta and set(arrays) == set(original_arrays) and all(
        np.array_equal(arrays[k], original_arrays[k]) for k in arrays)
    return "same" if same else "silent-change"


# ---- tables ---------------------------------------------------------------------------------------------------
def table_case(rng: np.random.Generator, i: int, folder: Path) -> tuple[Path, str]:
    """A broken or extreme table file."""
    r = int(rng.integers(12))
    n, d = int(rng.integers(0, 40)), int(rng.integers(1, 5))
    X = rng.normal(size=(n, d))
    if r == 0:
        p = folder / f"{i}.csv"
        p.write_bytes(b"a,b\n1,2\n" + rng.bytes(int(rng.integers(1, 200))))
        return p, "binary-csv"
    if r == 1:
        p = folder / f"{i}.csv"
        p.write_text("a,b\n" + "\n".join(f"{10 ** int(rng.integers(300, 500))},{j}" for j in range(5)) + "\n")
        return p, "huge-numbers"
    if r == 2:
        p = folder / f"{i}.csv"
        p.write_text("a,b,c\n1,2\n3,4,5,6\n")
        return p, "ragged"
    if r == 3:
        p = folder / f"{i}.npz"
        p.write_bytes(rng.bytes(int(rng.integers(0, 300))))
        return p, "npz-garbage"
    if r == 4:
        p = folder / f"{i}.npz"
        with zipfile.ZipFile(p, "w") as z:
            z.writestr("X.npy", rng.bytes(int(rng.integers(0, 200))))
        return p, "npz-bad-member"
    if r == 5:
        p = folder / f"{i}.npz"
        np.savez(p, X=np.array([{"a": 1}, None], dtype=object))
        return p, "npz-pickle"
    if r == 6:
        p = folder / f"{i}.npz"
        np.savez(p, Y=X)
        return p, "npz-no-X"
    if r == 7:
        p = folder / f"{i}.mat"
        p.write_bytes(rng.bytes(int(rng.integers(0, 300))))
        return p, "mat-garbage"
    if r == 8:
        p = folder / f"{i}.parquet"
        p.write_bytes(b"PAR1" + rng.bytes(int(rng.integers(0, 200))) + b"PAR1")
        return p, "parquet-garbage"
    if r == 9:
        p = folder / f"{i}.csv"
        p.write_text("\n".join(",".join(rng.choice(["nan", "inf", "-inf", "", "x", "1e999", "0x1p3"], size=3))
                               for _ in range(6)) + "\n")
        return p, "odd-cells"
    if r == 10:
        p = folder / f"{i}.csv"
        p.write_bytes("a,b\n1,2\n".encode("utf-16"))
        return p, "utf16"
    p = folder / f"{i}.csv"
    p.write_text("")
    return p, "empty"


def scale_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float, str]:
    """Unit-scale (normal fit rows, normal test rows, obvious outliers) and an extreme (scale, offset) to apply."""
    d = int(rng.integers(1, 5))
    scales = [1e-200, 1e-9, 1e-5, 1.0, 1e6, 1e154, 1e300]
    f = float(scales[int(rng.integers(len(scales)))])
    c = float(rng.choice([0.0, 1.0, -3.0, 1e6])) * (f if rng.random() < 0.5 else 1.0)
    if abs(c) > 1e300 or abs(c) > 1e8 * f:  # beyond float64 resolution the rows really are identical
        c = 0.0
    fit, test = rng.normal(size=(200, d)), rng.normal(size=(100, d))
    out = rng.normal(size=(30, d)) + 10.0
    return fit, test, out, f, c, f"scale={f:g} offset={c:g} d={d}"


def _flag_rates(det_name: str, fit: np.ndarray, test: np.ndarray, out: np.ndarray) -> tuple[float, float]:
    import warnings

    from normalcy.detectors.vector import vector_detector_class

    kw = {"epochs": 30} if det_name == "autoencoder" else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        det = vector_detector_class(det_name)(alpha=0.05, **kw).fit(fit)
        return (float(np.mean([p.is_anomaly for p in det.predict(test)])),
                float(np.mean([p.is_anomaly for p in det.predict(out)])))


def judge_scales(det_name: str, fit: np.ndarray, test: np.ndarray, out: np.ndarray, f: float, c: float) -> str:
    """"ok" when the detector decides at scale f / offset c as it does at unit scale, "refused" for a typed
    error, else what went silently wrong (a model that cannot flag, or flags the normal rows)."""
    from normalcy.errors import NormalcyError

    try:
        base_normal, base_out = _flag_rates(det_name, fit, test, out)
        normal, outl = _flag_rates(det_name, c + fit * f, c + test * f, c + out * f)
    except NormalcyError:
        return "refused"
    except Exception as exc:  # noqa: BLE001
        return f"crash:{type(exc).__name__}"
    if outl < base_out - 0.2:
        return f"flags {outl:.0%} of obvious outliers (unit scale: {base_out:.0%})"
    if normal > base_normal + 0.2:
        return f"flags {normal:.0%} of normal rows (unit scale: {base_normal:.0%})"
    return "ok"


# ---- HTTP -----------------------------------------------------------------------------------------------------
def http_case(rng: np.random.Generator, i: int) -> dict[str, Any]:
    """Keyword arguments for TestClient.request: a hostile or odd request to the service."""
    r = int(rng.integers(10))
    case = image_case(rng, i)
    body = case.data if case.data is not None else b""
    name = os.fsencode(case.name).decode("latin-1")  # undecodable name bytes arrive as odd characters
    if r == 0:
        return {"method": "POST", "url": "/predict", "files": [("files", (name, body, "image/png"))]}
    if r == 1:  # several files, some good
        more = [image_case(rng, i * 100 + j) for j in range(int(rng.integers(1, 5)))]
        files = [("files", (os.fsencode(c.name).decode("latin-1"), c.data or b"", "application/octet-stream"))
                 for c in more]
        return {"method": "POST", "url": "/predict", "files": files}
    if r == 2:  # odd parameters
        alpha = rng.choice(["0", "1", "-1", "nan", "inf", "1e-300", "abc", "0.5", "", "0x10"])
        return {"method": "POST", "url": f"/predict?alpha={alpha}&pixel_fpr={alpha}&pictures={alpha}",
                "files": [("files", (name, body, "image/png"))]}
    if r == 3:  # no files / wrong field name
        return {"method": "POST", "url": "/predict", "files": [("file", (name, body, "image/png"))]}
    if r == 4:
        return {"method": "POST", "url": "/predict", "content": rng.bytes(int(rng.integers(0, 300))),
                "headers": {"content-type": "multipart/form-data; boundary=xyz"}}
    if r == 5:
        return {"method": "POST", "url": "/predict", "json": {"files": []}}
    if r == 6:  # too many files
        return {"method": "POST", "url": "/predict", "files": [("files", (f"{j}.png", body, "image/png"))
                                                               for j in range(20)]}
    if r == 7:
        paths = ["/", "/health", "/model", "/static/app.js", "/static/../../etc/passwd", "/static/%2e%2e",
                 "/docs", "/openapi.json", "/predict", "/nope"]
        return {"method": str(rng.choice(["GET", "HEAD", "DELETE", "PUT"])), "url": str(rng.choice(paths))}
    if r == 8:  # form fields with odd values
        return {"method": "POST", "url": "/predict", "files": [("files", (name, body, "image/png"))],
                "data": {"alpha": str(rng.choice(["2", "x", "0.1", "-0"]))}}
    return {"method": "POST", "url": "/predict", "files": [("files", ("\x00" * 3 + name, body, "image/jpeg"))]}


OK_STATUS = {200, 400, 404, 405, 413, 415, 422, 503}


def check_http(response: Any) -> str:
    """"ok", or what is wrong with the answer: a 5xx, internals in the text, or an error row graded normal."""
    if response.status_code not in OK_STATUS:
        return f"status {response.status_code}"
    text = response.text
    if " at 0x" in text or "object at" in text or "Traceback" in text:
        return "internals in the message"
    if (response.status_code == 200 and text
            and response.headers.get("content-type", "").startswith("application/json")):
        body = response.json()
        for row in body.get("results", []) if isinstance(body, dict) else []:
            if row.get("status") == "error" and (row.get("is_anomaly") is not None or row.get("severity") != "error"):
                return "error row with a decision"
    return "ok"
