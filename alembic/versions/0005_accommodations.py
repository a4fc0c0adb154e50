"""Per-candidate accommodations (core.accommodations), and at most one monitoring hold open per session.

`sessions.accommodations`: detectors switched off or relaxed for the candidate and the breaks they may take,
applied by the media node. Sessions made before this revision have none.
A hold (an `exam_paused` or `exam_break` event whose end_s is NULL) is the interval during which no flag is
raised: the unique partial index makes a second one at the same time impossible, whichever process asks.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# core.events.HOLD_KINDS, spelled out: a migration must not change when the code does.
HOLD_KINDS = ("exam_paused", "exam_break")


def upgrade() -> None:
    op.add_column("sessions", sa.Column("accommodations", JSONB, nullable=False,
                                        server_default=sa.text("'{}'::jsonb")))
    # The shape core.accommodations reads back; the details (kinds, ranges) are checked by Accommodations.parse.
    op.create_check_constraint("sessions_accommodations_object", "sessions",
                               "jsonb_typeof(accommodations) = 'object'")
    op.create_index("events_one_open_hold", "events", ["session_id"], unique=True,
                    postgresql_where=sa.text(f"kind IN ({', '.join(repr(k) for k in HOLD_KINDS)}) AND end_s IS NULL"))


def downgrade() -> None:
    op.drop_index("events_one_open_hold", "events")
    op.drop_constraint("sessions_accommodations_object", "sessions")
    op.drop_column("sessions", "accommodations")
