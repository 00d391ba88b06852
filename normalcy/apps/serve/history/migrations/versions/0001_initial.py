"""Initial history tables: inspections and labels.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "inspections",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("uid", sa.String(32), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("model_id", sa.String(64), nullable=False),
        sa.Column("model_name", sa.String(64), nullable=False),
        sa.Column("model_version", sa.String(32)),
        sa.Column("server_version", sa.String(32)),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("input_sha256", sa.String(64)),
        sa.Column("input_bytes", sa.BigInteger()),
        sa.Column("format", sa.String(8)),
        sa.Column("width", sa.Integer()),
        sa.Column("height", sa.Integer()),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("score", sa.Float()),
        sa.Column("p_value", sa.Float()),
        sa.Column("alpha", sa.Float()),
        sa.Column("is_anomaly", sa.Boolean()),
        sa.Column("severity", sa.String(16)),
        sa.Column("severe_threshold", sa.Float()),
        sa.Column("defect_area", sa.BigInteger()),
        sa.Column("regions", sa.JSON()),
        sa.Column("brightness", sa.Float()),
        sa.Column("sharpness", sa.Float()),
        sa.Column("thumb_path", sa.String(255)),
        sa.Column("thumb_sha256", sa.String(64)),
        sa.Column("mask_path", sa.String(255)),
        sa.Column("mask_sha256", sa.String(64)),
    )
    for col in ("created_at", "request_id", "model_id", "input_sha256", "p_value", "is_anomaly", "severity"):
        op.create_index(f"ix_inspections_{col}", "inspections", [col])
    op.create_table(
        "labels",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("inspection_id", BigId, sa.ForeignKey("inspections.id", ondelete="CASCADE"), nullable=False),
        sa.Column("label", sa.String(8), nullable=False),
        sa.Column("verdict", sa.String(8), nullable=False),
        sa.Column("who", sa.String(80), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
    )
    op.create_index("ix_labels_inspection_id", "labels", ["inspection_id"])


def downgrade() -> None:
    op.drop_table("labels")
    op.drop_table("inspections")
