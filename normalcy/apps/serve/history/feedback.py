"""Labels back into training: the stored images people confirmed normal (or anomalous), for `normalcy fit --from-db`."""

from __future__ import annotations

from pathlib import Path

from normalcy.apps.serve.history.media import MediaStore
from normalcy.apps.serve.history.store import HistoryStore


def confirmed_images(db: str | Path, label: str, *, history_dir: str | Path | None = None,
                     model_id: str | None = None) -> tuple[list[Path], list[str]]:
    """Files of the uploads whose latest label is `label` ("normal" or "anomaly"), one per distinct image, and
    the reasons others were skipped (image not kept: serve with --keep-images; file missing or changed)."""
    store = HistoryStore(db, media_dir=history_dir)
    try:
        store.migrate()  # an older history gets the input_path column first
        rows = store.confirmed(label, model_id)
    finally:
        store.dispose()
    media = MediaStore(store.media_dir)
    paths: list[Path] = []
    skipped: list[str] = []
    seen: set[str] = set()
    for row in rows:
        if row["input_sha256"] in seen:
            continue
        if not row.get("input_path"):
            skipped.append(f"{row['filename']} (#{row['id']}): image not kept (serve with --keep-images)")
            continue
        try:
            media.get(row["input_path"], row["input_sha256"])
        except FileNotFoundError as exc:
            skipped.append(f"{row['filename']} (#{row['id']}): {exc}")
            continue
        seen.add(row["input_sha256"])
        paths.append(media.root / row["input_path"])
    return paths, skipped
