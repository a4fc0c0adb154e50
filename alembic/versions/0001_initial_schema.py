"""Initial schema: accounts, sessions, reference photos, segments, batches, master videos, events, audit log.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB, UUID

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

SESSION_STATUSES = ("created", "live", "ended", "finalizing", "finalized", "failed")
SEGMENT_STATES = ("recording", "spooled", "stored", "merged", "failed")
BATCH_STATES = ("stored", "merged", "deleted")
REVIEW_STATES = ("pending", "confirmed", "dismissed")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _now() -> sa.TextClause:
    return sa.text("now()")


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("name", sa.Text, nullable=False, unique=True),
        sa.Column("role", sa.Text, nullable=False),
        sa.Column("password_hash", sa.Text, nullable=False),
        sa.Column("disabled", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
        sa.Column("last_login_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint(_in("role", ("admin", "proctor")), name="users_role"),
    )
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("user_id", sa.BigInteger, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        # Only a SHA-256 of the token is stored; the token itself is shown once.
        sa.Column("token_hash", sa.Text, nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
        sa.Column("last_used_at", sa.DateTime(timezone=True)),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
    )
    op.create_table(
        "sessions",
        sa.Column("id", UUID(as_uuid=False), primary_key=True, server_default=sa.text("gen_random_uuid()")),
        sa.Column("candidate", sa.Text, nullable=False),
        sa.Column("exam", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False, server_default="created"),
        sa.Column("created_by", sa.BigInteger, sa.ForeignKey("users.id", ondelete="SET NULL")),
        # Join token data: the nonce bound into the signed link and its expiry; rotating the nonce revokes it.
        sa.Column("join_nonce", sa.Text, nullable=False),
        sa.Column("join_expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("consent_at", sa.DateTime(timezone=True)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("ended_at", sa.DateTime(timezone=True)),
        sa.Column("end_reason", sa.Text),
        sa.Column("last_seen_at", sa.DateTime(timezone=True)),
        sa.Column("node_id", sa.Text),
        sa.Column("connections", sa.Integer, nullable=False, server_default="0"),
        # Session media timeline: seconds of media received, and the reconnect gaps as
        # [{"at_s": media time where the gap sits, "wall_s": how long the candidate was away}].
        sa.Column("duration_s", sa.Float, nullable=False, server_default="0"),
        sa.Column("media_gaps", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
        sa.Column("failure_reason", sa.Text),
        sa.Column("score", sa.Float, nullable=False, server_default="0"),
        sa.CheckConstraint(_in("status", SESSION_STATUSES), name="sessions_status"),
    )
    op.create_index("sessions_status_idx", "sessions", ["status"])
    op.create_index("sessions_created_idx", "sessions", ["created_at"])
    op.create_table(
        "reference_photos",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("session_id", UUID(as_uuid=False), sa.ForeignKey("sessions.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("storage_key", sa.Text, nullable=False),
        sa.Column("content_type", sa.Text, nullable=False),
        sa.Column("width", sa.Integer, nullable=False),
        sa.Column("height", sa.Integer, nullable=False),
        sa.Column("bytes", sa.Integer, nullable=False),
        sa.Column("sha256", sa.Text, nullable=False),
        sa.Column("faces", sa.Integer),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
    )
    op.create_index("reference_photos_session_idx", "reference_photos", ["session_id"])
    op.create_table(
        "segments",
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
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
        sa.Column("stored_at", sa.DateTime(timezone=True)),
        sa.UniqueConstraint("session_id", "idx", name="segments_session_idx"),
        sa.CheckConstraint(_in("state", SEGMENT_STATES), name="segments_state"),
    )
    op.create_table(
        "batches",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("session_id", UUID(as_uuid=False), sa.ForeignKey("sessions.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("first_idx", sa.Integer, nullable=False),
        sa.Column("last_idx", sa.Integer, nullable=False),
        sa.Column("start_s", sa.Float, nullable=False),
        sa.Column("end_s", sa.Float, nullable=False),
        sa.Column("bytes", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.Text, nullable=False),
        sa.Column("storage_key", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False, server_default="stored"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
        sa.UniqueConstraint("session_id", "first_idx", name="batches_session_first"),
        sa.CheckConstraint(_in("state", BATCH_STATES), name="batches_state"),
    )
    op.create_table(
        "master_videos",
        sa.Column("session_id", UUID(as_uuid=False), sa.ForeignKey("sessions.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("storage_key", sa.Text, nullable=False),
        sa.Column("bytes", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.Text, nullable=False),
        sa.Column("duration_s", sa.Float, nullable=False),
        sa.Column("width", sa.Integer),
        sa.Column("height", sa.Integer),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
    )
    op.create_table(
        "events",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("session_id", UUID(as_uuid=False), sa.ForeignKey("sessions.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        # Session media time, seconds; end_s is NULL while the condition still holds.
        sa.Column("start_s", sa.Float, nullable=False),
        sa.Column("end_s", sa.Float),
        sa.Column("confidence", sa.Float, nullable=False, server_default="0"),
        sa.Column("details", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("snapshot_key", sa.Text),
        sa.Column("source", sa.Text, nullable=False, server_default="analyzer"),
        sa.Column("review_state", sa.Text, nullable=False, server_default="pending"),
        sa.Column("review_note", sa.Text),
        sa.Column("reviewed_by", sa.BigInteger, sa.ForeignKey("users.id", ondelete="SET NULL")),
        sa.Column("reviewed_at", sa.DateTime(timezone=True)),
        sa.Column("acknowledged_by", sa.BigInteger, sa.ForeignKey("users.id", ondelete="SET NULL")),
        sa.Column("acknowledged_at", sa.DateTime(timezone=True)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
        sa.CheckConstraint(_in("review_state", REVIEW_STATES), name="events_review_state"),
        sa.CheckConstraint("end_s IS NULL OR end_s >= start_s", name="events_interval"),
    )
    op.create_index("events_session_start_idx", "events", ["session_id", "start_s"])
    op.create_table(
        "audit_log",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("target", sa.Text),
        sa.Column("details", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    )
    op.create_index("audit_log_at_idx", "audit_log", ["at"])


def downgrade() -> None:
    for table in ("audit_log", "events", "master_videos", "batches", "segments", "reference_photos", "sessions",
                  "api_tokens", "users"):
        op.drop_table(table)
