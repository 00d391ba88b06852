"""Tables of the inspection history: one row per inspected image, and the labels people give to decisions."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# BIGINT ids on PostgreSQL; SQLite only auto-increments a column declared exactly INTEGER PRIMARY KEY
BigId = BigInteger().with_variant(Integer, "sqlite")

STATUSES = ("ok", "error")
SEVERITIES = ("normal", "suspicious", "anomalous", "severe")
LABELS = ("normal", "anomaly")
VERDICTS = ("confirm", "overrule")


class Base(DeclarativeBase):
    """Declarative base of the history tables (the Alembic migrations create exactly these)."""


class Inspection(Base):
    """One image the service was asked to inspect: the decision it returned and where its pictures are kept."""

    __tablename__ = "inspections"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    uid: Mapped[str] = mapped_column(String(32), unique=True)  # made by the service: makes replay idempotent
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)  # when the decision was made
    request_id: Mapped[str] = mapped_column(String(64), index=True)
    model_id: Mapped[str] = mapped_column(String(64), index=True)  # SHA-256 of the model file
    model_name: Mapped[str] = mapped_column(String(64))  # detector name
    model_version: Mapped[str | None] = mapped_column(String(32))  # normalcy version that wrote the model
    server_version: Mapped[str | None] = mapped_column(String(32))  # normalcy version that served it
    filename: Mapped[str] = mapped_column(String(255))  # the client's name, as sent (never used as a path)
    input_sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    input_bytes: Mapped[int | None] = mapped_column(BigInteger)
    input_path: Mapped[str | None] = mapped_column(String(255))  # the upload itself, with --keep-images (0002)
    format: Mapped[str | None] = mapped_column(String(8))
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(8))  # ok | error
    error: Mapped[str] = mapped_column(Text, default="")
    score: Mapped[float | None] = mapped_column(Float)
    p_value: Mapped[float | None] = mapped_column(Float, index=True)
    alpha: Mapped[float | None] = mapped_column(Float)  # the false-alarm rate the request was decided at
    is_anomaly: Mapped[bool | None] = mapped_column(Boolean, index=True)
    severity: Mapped[str | None] = mapped_column(String(16), index=True)
    severe_threshold: Mapped[float | None] = mapped_column(Float)  # the model's, to re-grade at another alpha
    defect_area: Mapped[int | None] = mapped_column(BigInteger)
    regions: Mapped[list | None] = mapped_column(JSON)
    brightness: Mapped[float | None] = mapped_column(Float)  # mean grey level 0..1 (drift monitoring)
    sharpness: Mapped[float | None] = mapped_column(Float)  # variance of the Laplacian (drift monitoring)
    thumb_path: Mapped[str | None] = mapped_column(String(255))  # relative to the media folder
    thumb_sha256: Mapped[str | None] = mapped_column(String(64))
    mask_path: Mapped[str | None] = mapped_column(String(255))
    mask_sha256: Mapped[str | None] = mapped_column(String(64))

    labels: Mapped[list[Label]] = relationship(back_populates="inspection", order_by="Label.id",
                                               cascade="all, delete-orphan")


class Label(Base):
    """A person's verdict on one decision: the true class, who said so and when (the latest one counts)."""

    __tablename__ = "labels"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    inspection_id: Mapped[int] = mapped_column(ForeignKey("inspections.id", ondelete="CASCADE"), index=True)
    label: Mapped[str] = mapped_column(String(8))  # normal | anomaly
    verdict: Mapped[str] = mapped_column(String(8))  # confirm | overrule (relative to the decision shown)
    who: Mapped[str] = mapped_column(String(80))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    note: Mapped[str] = mapped_column(Text, default="")

    inspection: Mapped[Inspection] = relationship(back_populates="labels")
