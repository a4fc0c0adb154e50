"""LTI 1.3: the platforms (LMSs) an admin registered, their deployments, our own signing key, and which session
and staff account each platform user's launch maps to. Written only by proctor/store/lti.py.

- `lti_platforms`: one registration (issuer + client id) with its OIDC login, token and JWKS URLs.
- `lti_deployments`: the deployment ids a platform may launch from (a launch from any other is refused).
- `lti_keys`: our RSA key pair, generated once on first use; the private half never leaves the database (the JWKS
  route serves the public JWK column only). Several rows allow a rotation: the newest signs, all are served.
- `lti_sessions`: platform + deployment + resource link + user `sub` -> the candidate's proctoring session, so a
  second launch resumes it. Deleting the session deletes the mapping (the next launch starts a new one).
- `lti_users`: platform + user `sub` -> the proctor-role account an instructor launch signs in as.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB, UUID

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "lti_platforms",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("issuer", sa.Text, nullable=False),
        sa.Column("client_id", sa.Text, nullable=False),
        sa.Column("auth_login_url", sa.Text, nullable=False),
        sa.Column("auth_token_url", sa.Text, nullable=False),
        sa.Column("key_set_url", sa.Text, nullable=False),
        sa.Column("created_by", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
        sa.UniqueConstraint("issuer", "client_id", name="lti_platforms_issuer_client"),
    )
    op.create_table(
        "lti_deployments",
        sa.Column("platform_id", sa.BigInteger, sa.ForeignKey("lti_platforms.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("deployment_id", sa.Text, primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
    )
    op.create_table(
        "lti_keys",
        sa.Column("kid", sa.Text, primary_key=True),
        sa.Column("private_pem", sa.Text, nullable=False),
        sa.Column("public_jwk", JSONB, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
    )
    op.create_table(
        "lti_sessions",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("platform_id", sa.BigInteger, sa.ForeignKey("lti_platforms.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("deployment_id", sa.Text, nullable=False),
        sa.Column("resource_link_id", sa.Text, nullable=False),
        sa.Column("sub", sa.Text, nullable=False),
        sa.Column("session_id", UUID(as_uuid=False), sa.ForeignKey("sessions.id", ondelete="CASCADE"),
                  nullable=False, unique=True),
        sa.Column("context_title", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
    )
    op.create_index("lti_sessions_link_user", "lti_sessions",
                    ["platform_id", "deployment_id", "resource_link_id", "sub", "created_at"])
    op.create_table(
        "lti_users",
        sa.Column("platform_id", sa.BigInteger, sa.ForeignKey("lti_platforms.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("sub", sa.Text, primary_key=True),
        sa.Column("user_id", sa.BigInteger, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False,
                  unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
    )


def downgrade() -> None:
    op.drop_table("lti_users")
    op.drop_index("lti_sessions_link_user", "lti_sessions")
    op.drop_table("lti_sessions")
    op.drop_table("lti_keys")
    op.drop_table("lti_deployments")
    op.drop_table("lti_platforms")
