"""Thumbnails and masks of inspected images as files beside the database, named by their SHA-256 (never blobs)."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path


class MediaStore:
    """Content-addressed files under one folder: `put` returns (relative path, sha256); identical bytes stored once."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()

    def put(self, data: bytes, suffix: str) -> tuple[str, str]:
        """Write `data` atomically (temp file + rename) unless already there; returns (relative path, sha256)."""
        digest = hashlib.sha256(data).hexdigest()
        rel = f"{digest[:2]}/{digest}{suffix}"
        path = self.root / rel
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=digest[:8] + ".", suffix=".tmp", dir=path.parent)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        return rel, digest

    def get(self, rel: str, sha256: str | None = None) -> bytes:
        """Bytes of a stored file; FileNotFoundError if it is missing, outside the folder, or its hash changed."""
        path = (self.root / rel).resolve()
        if not path.is_relative_to(self.root) or not path.is_file():
            raise FileNotFoundError(f"history file {rel!r} is not in {self.root}")
        data = path.read_bytes()
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            raise FileNotFoundError(f"history file {rel!r} does not match its recorded SHA-256 (changed on disk)")
        return data
