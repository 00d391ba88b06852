"""Keep the uploaded image itself when the server runs with --keep-images (for `normalcy fit --from-db`).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("inspections") as batch:
        batch.add_column(sa.Column("input_path", sa.String(255)))


def downgrade() -> None:
    with op.batch_alter_table("inspections") as batch:
        batch.drop_column("input_path")
