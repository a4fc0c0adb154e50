"""Per-session segment counter: media nodes allocate segment indexes from it when a segment opens.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("sessions", sa.Column("next_segment_idx", sa.Integer, nullable=False, server_default="0"))
    op.add_column("segments", sa.Column("spool_id", sa.Text))
    op.create_unique_constraint("segments_spool_id", "segments", ["spool_id"])


def downgrade() -> None:
    op.drop_constraint("segments_spool_id", "segments")
    op.drop_column("segments", "spool_id")
    op.drop_column("sessions", "next_segment_idx")
