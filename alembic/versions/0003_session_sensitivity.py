"""Per-session sensitivity: the profile (and overrides) staff chose at creation, applied by the media node.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# core.sensitivity.PROFILES, spelled out: a migration must not change when the code does.
PROFILES = ("strict", "standard", "lenient", "custom")


def upgrade() -> None:
    # Sessions made before this revision behave as they always did: the deployment's settings.
    op.add_column("sessions", sa.Column("sensitivity", JSONB, nullable=False,
                                        server_default=sa.text("""'{"profile": "standard"}'::jsonb""")))
    # The shape core.sensitivity reads back; the details (kinds, ranges) are checked by Sensitivity.parse.
    op.create_check_constraint(
        "sessions_sensitivity_profile", "sessions",
        # coalesce: a missing profile is NULL, and a CHECK that is NULL passes.
        "jsonb_typeof(sensitivity) = 'object' AND coalesce(sensitivity ->> 'profile', '') IN "
        f"({', '.join(repr(p) for p in PROFILES)})")


def downgrade() -> None:
    op.drop_constraint("sessions_sensitivity_profile", "sessions")
    op.drop_column("sessions", "sensitivity")
