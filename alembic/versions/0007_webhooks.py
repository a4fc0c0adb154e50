"""Signed webhooks: the endpoints an admin registered, and an outbox of events with one delivery row per endpoint.
Written only by proctor/store/webhooks.py.

- `webhook_endpoints`: URL, the signing secret (kept as is: an HMAC is computed with the secret itself, so a hash
  of it would be useless; it is never served back after creation), the event types it wants, enabled or not.
- `webhook_events`: one row per event that happened (its `id` is the `id` receivers deduplicate on), with the exact
  JSON body every endpoint receives; `dedup_key` makes "once per session" events (started, ended, finalized)
  idempotent when the code path that raises them runs twice.
- `webhook_deliveries`: one event to one endpoint: attempts, when the next one is due, the last status code or
  error, when it was delivered. The delivery worker's state lives here, not in Redis: a job lost from Redis, or a
  worker restarted, only delays a delivery (the dispatcher re-queues what is due).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, UUID

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "webhook_endpoints",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("secret", sa.Text, nullable=False),
        sa.Column("event_types", ARRAY(sa.Text), nullable=False),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("created_by", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
    )
    op.create_table(
        "webhook_events",
        sa.Column("id", UUID(as_uuid=False), primary_key=True),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        # Deleting a session deletes what was queued about it (a deletion removes the candidate's data).
        sa.Column("session_id", UUID(as_uuid=False), sa.ForeignKey("sessions.id", ondelete="CASCADE"),
                  nullable=True),
        sa.Column("dedup_key", sa.Text, nullable=True, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("event_id", UUID(as_uuid=False), sa.ForeignKey("webhook_events.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("endpoint_id", sa.BigInteger, sa.ForeignKey("webhook_endpoints.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("state", sa.Text, nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True, server_default=sa.text("now()")),
        sa.Column("queued_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_status", sa.Integer, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
        sa.UniqueConstraint("event_id", "endpoint_id", name="webhook_deliveries_event_endpoint"),
        sa.CheckConstraint("state IN ('pending', 'delivered', 'failed')", name="webhook_deliveries_state"),
    )
    # The dispatcher's scan: pending deliveries by due time.
    op.create_index("webhook_deliveries_due", "webhook_deliveries", ["next_attempt_at"],
                    postgresql_where=sa.text("state = 'pending'"))
    op.create_index("webhook_deliveries_endpoint", "webhook_deliveries", ["endpoint_id", "id"])


def downgrade() -> None:
    op.drop_table("webhook_deliveries")
    op.drop_table("webhook_events")
    op.drop_table("webhook_endpoints")
