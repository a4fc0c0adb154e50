"""Cases: one review decision per session (unreviewed -> in review -> cleared / concern raised) and its history.

A session with no `cases` row is unreviewed: nothing has to be written when a session ends, and sessions made
before this revision need no backfill.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import UUID

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# proctor.store.cases.STATUSES, spelled out: a migration must not change when the code does.
STATUSES = ("unreviewed", "in_review", "cleared", "concern_raised")
DECISIONS = ("cleared", "concern_raised")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def upgrade() -> None:
    op.create_table(
        "cases",
        sa.Column("session_id", UUID(as_uuid=False), sa.ForeignKey("sessions.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("status", sa.Text, nullable=False, server_default="unreviewed"),
        sa.Column("assignee_id", sa.BigInteger, sa.ForeignKey("users.id", ondelete="SET NULL")),
        # The written reason for the decision; required (non-blank) once the case is decided.
        sa.Column("rationale", sa.Text),
        sa.Column("decided_by", sa.BigInteger, sa.ForeignKey("users.id", ondelete="SET NULL")),
        sa.Column("decided_at", sa.DateTime(timezone=True)),
        # Bumped on every change: a client may send the version it saw, so two reviewers cannot overwrite
        # each other's decision unseen.
        sa.Column("version", sa.Integer, nullable=False, server_default="0"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
        sa.CheckConstraint(_in("status", STATUSES), name="cases_status"),
        sa.CheckConstraint(
            f"({_in('status', DECISIONS)}) = (rationale IS NOT NULL AND btrim(rationale) <> ''"
            " AND decided_at IS NOT NULL)",
            name="cases_decision_has_rationale"),
    )
    op.create_index("cases_status_idx", "cases", ["status"])
    op.create_index("cases_assignee_idx", "cases", ["assignee_id"])
    op.create_table(
        "case_history",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("session_id", UUID(as_uuid=False), sa.ForeignKey("sessions.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
        # The account name, not its id: the history must still read right after the account is removed.
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("from_status", sa.Text, nullable=False),
        sa.Column("to_status", sa.Text, nullable=False),
        sa.Column("assignee", sa.Text),
        sa.Column("note", sa.Text),
        sa.CheckConstraint(_in("from_status", STATUSES), name="case_history_from_status"),
        sa.CheckConstraint(_in("to_status", STATUSES), name="case_history_to_status"),
    )
    op.create_index("case_history_session_idx", "case_history", ["session_id", "id"])


def downgrade() -> None:
    op.drop_table("case_history")
    op.drop_table("cases")
