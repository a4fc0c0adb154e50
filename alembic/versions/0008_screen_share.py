"""The shared screen's archive: its own segments and its own master, beside the webcam's (issue 18).

Own tables rather than a `track` column in `segments`/`master_videos`: the webcam archive (its segment numbering,
merges into batches, the master and every reader of those tables: the API's segment list, the review page, the
webhooks' master details) stays exactly as it was, and a screen segment can never be taken for a webcam one by
a query that forgot a filter. Same states and same session media timeline as the webcam's; screen segments are
not merged into batches (at 1-2 fps they are small; finalize joins them directly).

- `screen_segments`: like `segments` (rows written by archiver/spool.py, the segment owner), its own idx numbering.
- `screen_masters`: one per session, like `master_videos` (written by archiver/assemble.py's finalize).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import UUID

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

SEGMENT_STATES = ("recording", "spooled", "stored", "merged", "failed")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def upgrade() -> None:
    op.create_table(
        "screen_segments",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("session_id", UUID(as_uuid=False), sa.ForeignKey("sessions.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("idx", sa.Integer, nullable=False),
        sa.Column("start_s", sa.Float, nullable=False),
        sa.Column("end_s", sa.Float, nullable=False),
        sa.Column("frames", sa.Integer, nullable=False, server_default="0"),
        sa.Column("bytes", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("sha256", sa.Text),
        sa.Column("storage_key", sa.Text),
        sa.Column("state", sa.Text, nullable=False, server_default="spooled"),
        sa.Column("node_id", sa.Text),
        sa.Column("spool_id", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
        sa.Column("stored_at", sa.DateTime(timezone=True)),
        sa.UniqueConstraint("session_id", "idx", name="screen_segments_session_idx"),
        sa.UniqueConstraint("spool_id", name="screen_segments_spool_id"),
        sa.CheckConstraint(_in("state", SEGMENT_STATES), name="screen_segments_state"),
    )
    op.create_table(
        "screen_masters",
        sa.Column("session_id", UUID(as_uuid=False), sa.ForeignKey("sessions.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("storage_key", sa.Text, nullable=False),
        sa.Column("bytes", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.Text, nullable=False),
        # Where the screen's first frame is on the session timeline (the master is placed on that timeline).
        sa.Column("start_s", sa.Float, nullable=False),
        sa.Column("duration_s", sa.Float, nullable=False),
        sa.Column("width", sa.Integer),
        sa.Column("height", sa.Integer),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
    )


def downgrade() -> None:
    op.drop_table("screen_masters")
    op.drop_table("screen_segments")
