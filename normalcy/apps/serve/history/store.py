"""The history database through SQLAlchemy 2: open by path or URL, migrate with Alembic, write, query, label."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, and_, create_engine, event, func, select
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.orm import Session

from normalcy.apps.serve.history.schema import LABELS, SEVERITIES, Inspection, Label
from normalcy.errors import NormalcyError, ParameterError

MIGRATIONS = Path(__file__).parent / "migrations"
DECISIONS = ("flagged", "passed", "error")
MAX_PAGE = 500
INSPECTION_FIELDS = [c.name for c in Inspection.__table__.columns]


class HistoryUnavailable(NormalcyError):
    """The history database cannot be reached or refused the operation (the service keeps scoring meanwhile)."""


def database_url(db: str | Path) -> str:
    """A SQLAlchemy URL from `--db`: a URL as given (e.g. postgresql+psycopg://...), or a file path -> SQLite."""
    text = str(db)
    if "://" in text:
        try:
            make_url(text)
        except ArgumentError as exc:
            raise ParameterError(f"--db {text!r} is not a valid database URL ({exc}); give a file path for SQLite "
                                 "or a URL like postgresql+psycopg://user:password@host:5432/dbname") from None
        return text
    return "sqlite:///" + str(Path(text).expanduser().resolve())


def default_media_dir(url: str) -> Path:
    """Where thumbnails and masks go: `<db file>.files/` beside a SQLite file, else `./normalcy-history-files/`."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite" and u.database and u.database != ":memory:":
        return Path(u.database + ".files")
    return Path("normalcy-history-files").resolve()


@dataclass(frozen=True)
class HistoryFilter:
    """Which inspections to list or export; decision and severity are re-evaluated at `alpha` when it is given."""

    since: datetime | None = None
    until: datetime | None = None
    decision: str | None = None  # flagged | passed | error
    severity: str | None = None  # normal | suspicious | anomalous | severe
    model_id: str | None = None
    alpha: float | None = None
    suspicious_factor: float = 5.0

    def __post_init__(self) -> None:
        for name in ("since", "until"):  # stored times are UTC; SQLite compares them as text, so convert first
            t = getattr(self, name)
            if t is not None:
                object.__setattr__(self, name, t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC))
        if self.decision is not None and self.decision not in DECISIONS:
            raise ParameterError(f"decision filter must be one of {DECISIONS}, got {self.decision!r}")
        if self.severity is not None and self.severity not in SEVERITIES:
            raise ParameterError(f"severity filter must be one of {SEVERITIES}, got {self.severity!r}")
        if self.alpha is not None and not 0 < self.alpha < 1:
            raise ParameterError(f"alpha must be in (0, 1), got {self.alpha!r}")

    def conditions(self) -> list[ColumnElement[bool]]:
        """SQL conditions for these filters."""
        t = Inspection
        cond: list[ColumnElement[bool]] = []
        if self.since is not None:
            cond.append(t.created_at >= self.since)
        if self.until is not None:
            cond.append(t.created_at < self.until)
        if self.model_id:
            cond.append(t.model_id == self.model_id)
        a = self.alpha
        if self.decision == "error":
            cond.append(t.status == "error")
        elif self.decision is not None:
            flagged = t.p_value <= a if a is not None else t.is_anomaly.is_(True)
            cond += [t.status == "ok", flagged if self.decision == "flagged" else ~flagged]
        if self.severity is not None and a is None:
            cond.append(t.severity == self.severity)
        elif self.severity is not None:
            severe = and_(t.severe_threshold.is_not(None), t.score >= t.severe_threshold)
            cond.append(t.status == "ok")
            cond.append({
                "normal": t.p_value > self.suspicious_factor * a,
                "suspicious": and_(t.p_value > a, t.p_value <= self.suspicious_factor * a),
                "anomalous": and_(t.p_value <= a, ~severe),
                "severe": and_(t.p_value <= a, severe),
            }[self.severity])
        return cond


class HistoryStore:
    """One history database (SQLite file or PostgreSQL URL) and its media folder."""

    def __init__(self, db: str | Path, *, media_dir: str | Path | None = None, connect_timeout: int = 3) -> None:
        self.url = database_url(db)
        url = make_url(self.url)
        self.backend = url.get_backend_name()
        connect_args: dict[str, Any] = {}
        if self.backend == "sqlite":
            connect_args = {"timeout": 15, "check_same_thread": False}
            if url.database and url.database != ":memory:":
                Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        elif self.backend == "postgresql":
            connect_args = {"connect_timeout": connect_timeout}
        try:
            self.engine: Engine = create_engine(url, pool_pre_ping=True, connect_args=connect_args)
        except (NoSuchModuleError, ImportError) as exc:
            raise ParameterError(f"--db {url.render_as_string(hide_password=True)!r}: no driver for it ({exc}); "
                                 "for PostgreSQL install psycopg (pip install 'psycopg[binary]')") from None
        if self.backend == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self.media_dir = Path(media_dir).resolve() if media_dir else default_media_dir(self.url)

    @property
    def public_name(self) -> str:
        """What /health may show: a SQLite file's name (not the server's folders), else the URL without password."""
        if self.backend == "sqlite":
            return Path(make_url(self.url).database or ":memory:").name
        return self.display_url

    @property
    def display_url(self) -> str:
        """The URL with any password hidden (for logs, /health and error messages)."""
        return make_url(self.url).render_as_string(hide_password=True)

    # ---- schema -------------------------------------------------------------------------------------------
    def migrate(self, target: str = "head") -> str:
        """Bring the schema to `target` (the newest revision) with Alembic (creates the tables when empty)."""
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with self._guard("migrate"), self.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, target)
        return self.revision()

    def revision(self) -> str:
        """The schema revision recorded in the database (empty when never migrated)."""
        from alembic.runtime.migration import MigrationContext

        with self._guard("read the schema revision of"), self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision() or ""

    def ping(self) -> None:
        """Raise HistoryUnavailable unless the database answers."""
        with self._guard("reach"), self.engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")

    def dispose(self) -> None:
        """Close pooled connections."""
        self.engine.dispose()

    # ---- writing ------------------------------------------------------------------------------------------
    def insert(self, records: list[dict[str, Any]]) -> int:
        """Insert inspection records, skipping uids already stored (replay is idempotent); returns rows added."""
        if not records:
            return 0
        with self._guard("write to"), Session(self.engine) as s, s.begin():
            uids = [r["uid"] for r in records]
            have = set(s.scalars(select(Inspection.uid).where(Inspection.uid.in_(uids))))
            new = [_row(r) for r in records if r["uid"] not in have]
            s.add_all(new)
        return len(new)

    def add_label(self, inspection_id: int, label: str, who: str, *, note: str = "",
                  shown_flagged: bool | None = None) -> dict[str, Any]:
        """Store a person's label for one inspection; `verdict` says if it confirms or overrules the decision shown
        (the stored decision unless `shown_flagged` is given). KeyError if there is no such inspection."""
        if label not in LABELS:
            raise ParameterError(f"label must be one of {LABELS}, got {label!r}")
        who = who.strip()[:80]
        if not who:
            raise ParameterError("who must name the person labelling (non-empty)")
        with self._guard("write a label to"), Session(self.engine) as s, s.begin():
            row = s.get(Inspection, inspection_id)
            if row is None:
                raise KeyError(inspection_id)
            if row.status != "ok":
                raise ParameterError(f"inspection {inspection_id} could not be scored ({row.error}); nothing to label")
            shown = row.is_anomaly if shown_flagged is None else shown_flagged
            verdict = "confirm" if bool(shown) == (label == "anomaly") else "overrule"
            lab = Label(inspection_id=inspection_id, label=label, verdict=verdict, who=who,
                        created_at=datetime.now(UTC), note=note[:500])
            s.add(lab)
            s.flush()
            return _label_dict(lab)

    # ---- reading ------------------------------------------------------------------------------------------
    def query(self, flt: HistoryFilter | None = None, *, limit: int = 50,
              before: int | None = None) -> dict[str, Any]:
        """One page, newest first: `items`, `total` matching, and `next_before` (the cursor for the next page)."""
        flt = flt or HistoryFilter()
        limit = max(1, min(int(limit), MAX_PAGE))
        cond = flt.conditions()
        with self._guard("read from"), Session(self.engine) as s:
            total = s.scalar(select(func.count()).select_from(Inspection).where(*cond)) or 0
            page_cond = cond + ([Inspection.id < before] if before is not None else [])
            rows = list(s.scalars(select(Inspection).where(*page_cond).order_by(Inspection.id.desc())
                                  .limit(limit + 1)))
            more = len(rows) > limit
            rows = rows[:limit]
            items = self._with_labels(s, rows)
        return {"items": items, "total": int(total), "next_before": rows[-1].id if more else None}

    def get(self, inspection_id: int) -> dict[str, Any]:
        """One inspection with all its labels; KeyError if there is none."""
        with self._guard("read from"), Session(self.engine) as s:
            row = s.get(Inspection, inspection_id)
            if row is None:
                raise KeyError(inspection_id)
            out = self._with_labels(s, [row])[0]
            out["labels"] = [_label_dict(lab) for lab in row.labels]
            return out

    def iter_rows(self, flt: HistoryFilter | None = None, chunk: int = 1000) -> Iterator[dict[str, Any]]:
        """Every matching inspection, oldest first, read in chunks (for CSV export)."""
        cond = (flt or HistoryFilter()).conditions()
        last = 0
        while True:
            with self._guard("read from"), Session(self.engine) as s:
                rows = list(s.scalars(select(Inspection).where(*cond, Inspection.id > last)
                                      .order_by(Inspection.id).limit(chunk)))
                items = self._with_labels(s, rows)
            yield from items
            if len(rows) < chunk:
                return
            last = rows[-1].id

    def models(self) -> list[dict[str, Any]]:
        """Models that have inspections: id, name, count, first and last time (for the page's model filter)."""
        t = Inspection
        with self._guard("read from"), Session(self.engine) as s:
            rows = s.execute(select(t.model_id, func.max(t.model_name), func.count(), func.min(t.created_at),
                                    func.max(t.created_at)).group_by(t.model_id).order_by(func.max(t.created_at)))
            return [{"model_id": m, "model_name": n, "count": c, "first": _iso(a), "last": _iso(b)}
                    for m, n, c, a, b in rows]

    def normal_stream(self, model_id: str, max_score: float, limit: int = 100_000) -> list[tuple]:
        """(score, brightness, sharpness, time) of a model's most recent scored images with score <= max_score,
        oldest first: rebuilds the drift monitor after a restart."""
        t = Inspection
        cond = [t.model_id == model_id, t.status == "ok", t.score.is_not(None)]
        if math.isfinite(max_score):
            cond.append(t.score <= max_score)
        with self._guard("read from"), Session(self.engine) as s:
            rows = s.execute(select(t.score, t.brightness, t.sharpness, t.created_at).where(*cond)
                             .order_by(t.id.desc()).limit(limit)).all()
        return [(a, b, c, d.timestamp() if d else None) for a, b, c, d in reversed(rows)]

    def confirmed(self, label: str, model_id: str | None = None) -> list[dict[str, Any]]:
        """Inspections whose latest label is `label` (normal or anomaly), for feeding labels back into training."""
        t = Inspection
        latest = (select(Label.inspection_id, func.max(Label.id).label("lid")).group_by(Label.inspection_id)
                  .subquery())
        cond = [Label.label == label] + ([t.model_id == model_id] if model_id else [])
        q = (select(t).join(latest, latest.c.inspection_id == t.id).join(Label, Label.id == latest.c.lid)
             .where(*cond).order_by(t.id))
        with self._guard("read from"), Session(self.engine) as s:
            return self._with_labels(s, list(s.scalars(q)))

    # ---- helpers ------------------------------------------------------------------------------------------
    def _with_labels(self, s: Session, rows: list[Inspection]) -> list[dict[str, Any]]:
        """Rows as dicts with their latest label (or None)."""
        latest: dict[int, Label] = {}
        if rows:
            for lab in s.scalars(select(Label).where(Label.inspection_id.in_([r.id for r in rows]))
                                 .order_by(Label.id)):
                latest[lab.inspection_id] = lab
        out = []
        for r in rows:
            d = {k: getattr(r, k) for k in INSPECTION_FIELDS}
            d["created_at"] = _iso(r.created_at)
            d["label"] = _label_dict(latest[r.id]) if r.id in latest else None
            out.append(d)
        return out

    def _guard(self, what: str) -> _Guard:
        return _Guard(self, what)


class _Guard:
    """Turn SQLAlchemy errors into HistoryUnavailable naming the database (password hidden)."""

    def __init__(self, store: HistoryStore, what: str) -> None:
        self.store, self.what = store, what

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if isinstance(exc, SQLAlchemyError):
            msg = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0][:300]
            raise HistoryUnavailable(f"cannot {self.what} the history database {self.store.display_url}: "
                                     f"{type(exc).__name__}: {msg}") from exc


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    """WAL lets the page read while the writer writes; foreign keys on for label cascades."""
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _row(rec: dict[str, Any]) -> Inspection:
    """An Inspection from a record dict (times as ISO strings or datetimes)."""
    data = {k: v for k, v in rec.items() if k in INSPECTION_FIELDS and k != "id"}
    if isinstance(data.get("created_at"), str):
        data["created_at"] = datetime.fromisoformat(data["created_at"])
    data.setdefault("error", "")
    return Inspection(**data)


def _iso(t: datetime | None) -> str | None:
    """UTC ISO 8601 (SQLite returns naive datetimes: they were stored as UTC)."""
    if t is None:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _label_dict(lab: Label) -> dict[str, Any]:
    return {"label": lab.label, "verdict": lab.verdict, "who": lab.who, "at": _iso(lab.created_at), "note": lab.note}
