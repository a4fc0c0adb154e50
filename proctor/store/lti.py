"""Every write to the LTI tables (alembic 0006): the platforms an admin registered and their deployments, our own
signing key, the session each platform user's launch of a resource link maps to, and the staff account each
instructor maps to. Sessions themselves are created through proctor.store.sessions, accounts through
proctor.accounts; this module only keeps the mappings.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from core.sessions import OPEN_STATUSES
from proctor import accounts
from proctor.accounts import audit
from proctor.http import unstorable
from proctor.store import sessions

MAX_TEXT = 500
MAX_URL = 2000
MAX_DEPLOYMENTS = 100
# A resumed session whose join link would expire sooner than this gets a new link (the old one stops working).
RELINK_BEFORE_S = 3600


class LtiConfigError(ValueError):
    """A platform registration that cannot be used; the message says which field and why."""


@dataclass(frozen=True)
class Platform:
    id: int
    name: str
    issuer: str
    client_id: str
    auth_login_url: str
    auth_token_url: str
    key_set_url: str
    deployment_ids: tuple[str, ...]
    created_by: str
    created_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "issuer": self.issuer, "client_id": self.client_id,
                "auth_login_url": self.auth_login_url, "auth_token_url": self.auth_token_url,
                "key_set_url": self.key_set_url, "deployment_ids": list(self.deployment_ids),
                "created_by": self.created_by, "created_at": self.created_at.isoformat()}


@dataclass(frozen=True)
class ToolKey:
    kid: str
    private_pem: str
    public_jwk: dict[str, Any]


def _text(value: str, what: str, limit: int = MAX_TEXT) -> str:
    value = value.strip()
    if not value:
        raise LtiConfigError(f"{what}: must not be empty")
    if len(value) > limit:
        raise LtiConfigError(f"{what}: at most {limit} characters, got {len(value)}")
    reason = unstorable(value)
    if reason is not None or any(ord(c) < 0x20 for c in value):
        raise LtiConfigError(f"{what}: contains {reason or 'control characters'}")
    return value


def _url(value: str, what: str) -> str:
    value = _text(value, what, MAX_URL)
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.hostname or " " in value:
        raise LtiConfigError(f"{what}: must be an absolute http(s) URL, got {value[:80]!r}")
    return value


def check_platform(*, name: str, issuer: str, client_id: str, auth_login_url: str, auth_token_url: str,
                   key_set_url: str, deployment_ids: list[str]) -> dict[str, Any]:
    """The cleaned fields of a registration, or LtiConfigError naming the first wrong one."""
    deployments = sorted({_text(d, "deployment id") for d in deployment_ids if d.strip()})
    if not deployments:
        raise LtiConfigError("deployment ids: at least one (the platform shows it when the tool is deployed)")
    if len(deployments) > MAX_DEPLOYMENTS:
        raise LtiConfigError(f"deployment ids: at most {MAX_DEPLOYMENTS}")
    return {"name": _text(name, "name", 200), "issuer": _text(issuer, "issuer"),
            "client_id": _text(client_id, "client id"), "auth_login_url": _url(auth_login_url, "auth login URL"),
            "auth_token_url": _url(auth_token_url, "token URL"), "key_set_url": _url(key_set_url, "key set URL"),
            "deployment_ids": deployments}


# --- platforms ---------------------------------------------------------------------------------------------------
_PLATFORMS = ("SELECT p.*, coalesce(array_agg(d.deployment_id ORDER BY d.deployment_id) "
              "FILTER (WHERE d.deployment_id IS NOT NULL), '{}') AS deployment_ids FROM lti_platforms p "
              "LEFT JOIN lti_deployments d ON d.platform_id = p.id")


def _platform(row: asyncpg.Record) -> Platform:
    return Platform(row["id"], row["name"], row["issuer"], row["client_id"], row["auth_login_url"],
                    row["auth_token_url"], row["key_set_url"], tuple(row["deployment_ids"]), row["created_by"],
                    row["created_at"])


async def add_platform(conn: asyncpg.Connection, *, actor: str, name: str, issuer: str, client_id: str,
                       auth_login_url: str, auth_token_url: str, key_set_url: str,
                       deployment_ids: list[str]) -> Platform:
    """Register a platform (LtiConfigError for a wrong field or an issuer + client id already registered).
    Audit-logged."""
    fields = check_platform(name=name, issuer=issuer, client_id=client_id, auth_login_url=auth_login_url,
                            auth_token_url=auth_token_url, key_set_url=key_set_url, deployment_ids=deployment_ids)
    async with conn.transaction():
        try:
            platform_id = await conn.fetchval(
                "INSERT INTO lti_platforms (name, issuer, client_id, auth_login_url, auth_token_url, key_set_url, "
                "created_by) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id", fields["name"], fields["issuer"],
                fields["client_id"], fields["auth_login_url"], fields["auth_token_url"], fields["key_set_url"], actor)
        except asyncpg.UniqueViolationError:
            raise LtiConfigError(f"issuer {fields['issuer']!r} with client id {fields['client_id']!r} is already "
                                 "registered") from None
        await conn.executemany("INSERT INTO lti_deployments (platform_id, deployment_id) VALUES ($1, $2)",
                               [(platform_id, d) for d in fields["deployment_ids"]])
        await audit(conn, actor, "lti.platform.add", f"lti_platform:{platform_id}",
                    {k: v for k, v in fields.items()})
    platform = await get_platform(conn, platform_id)
    assert platform is not None
    return platform


async def remove_platform(conn: asyncpg.Connection, platform_id: int, *, actor: str) -> bool:
    """Unregister a platform: its launches are refused from now on (sessions already made stay). Audit-logged."""
    row = await conn.fetchrow("DELETE FROM lti_platforms WHERE id = $1 RETURNING issuer, client_id", platform_id)
    if row is None:
        return False
    await audit(conn, actor, "lti.platform.remove", f"lti_platform:{platform_id}",
                {"issuer": row["issuer"], "client_id": row["client_id"]})
    return True


async def get_platform(conn: asyncpg.Connection, platform_id: int) -> Platform | None:
    row = await conn.fetchrow(f"{_PLATFORMS} WHERE p.id = $1 GROUP BY p.id", platform_id)
    return _platform(row) if row else None


async def list_platforms(conn: asyncpg.Connection) -> list[Platform]:
    return [_platform(r) for r in await conn.fetch(f"{_PLATFORMS} GROUP BY p.id ORDER BY p.name, p.id")]


async def platforms_for_issuer(conn: asyncpg.Connection, issuer: str) -> list[Platform]:
    return [_platform(r) for r in await conn.fetch(f"{_PLATFORMS} WHERE p.issuer = $1 GROUP BY p.id ORDER BY p.id",
                                                   issuer)]


# --- our key pair --------------------------------------------------------------------------------------------------
async def signing_key(conn: asyncpg.Connection) -> ToolKey | None:
    """The newest of our keys (it signs); None before the first one was made."""
    row = await conn.fetchrow("SELECT kid, private_pem, public_jwk FROM lti_keys ORDER BY created_at DESC LIMIT 1")
    return ToolKey(row["kid"], row["private_pem"], dict(row["public_jwk"])) if row else None


async def add_first_key(conn: asyncpg.Connection, key: ToolKey) -> ToolKey:
    """Store `key` unless a key exists already, and return the one that signs: several web processes starting at
    once each make a key, one wins (the advisory lock serialises them) and all then use it."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('proctor:lti_keys'))")
        existing = await signing_key(conn)
        if existing is not None:
            return existing
        await conn.execute("INSERT INTO lti_keys (kid, private_pem, public_jwk) VALUES ($1, $2, $3)",
                           key.kid, key.private_pem, key.public_jwk)  # the pool's jsonb codec encodes the dict
        await audit(conn, "system", "lti.key.create", f"lti_key:{key.kid}", None)
    return key


async def public_jwks(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    """The public half of every key we hold (a platform may still verify with one that was rotated out)."""
    return [dict(r["public_jwk"]) for r in await conn.fetch("SELECT public_jwk FROM lti_keys ORDER BY created_at")]


# --- launches ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LaunchSession:
    row: asyncpg.Record  # the sessions row
    resumed: bool


async def session_for_launch(conn: asyncpg.Connection, *, platform: Platform, deployment_id: str,
                             resource_link_id: str, sub: str, candidate: str, exam: str,
                             context_title: str | None, ttl_s: int) -> LaunchSession:
    """The candidate's open session for this resource link (same platform, deployment and user `sub`), or a new
    one made through proctor.store.sessions. A session that has ended is never reopened: the next launch is a new
    attempt, and both stay for review. Concurrent launches of the same link by the same user (a double click)
    get the same session (an advisory lock on the link + user)."""
    actor = f"lti:{platform.id}:{sub[:64]}"
    lock = hashlib.sha256(f"{platform.id}\0{deployment_id}\0{resource_link_id}\0{sub}".encode()).digest()
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", int.from_bytes(lock[:8], "big", signed=True))
        session_id = await conn.fetchval(
            "SELECT l.session_id FROM lti_sessions l JOIN sessions s ON s.id = l.session_id "
            "WHERE l.platform_id = $1 AND l.deployment_id = $2 AND l.resource_link_id = $3 AND l.sub = $4 "
            "AND s.status = ANY($5::text[]) ORDER BY l.created_at DESC LIMIT 1",
            platform.id, deployment_id, resource_link_id, sub, list(OPEN_STATUSES))
        if session_id is not None:
            row = await sessions.get(conn, str(session_id))
            assert row is not None
            if row["join_expires_at"] < datetime.now(UTC) + timedelta(seconds=RELINK_BEFORE_S):
                row = await sessions.rotate_join_nonce(conn, str(session_id), ttl_s=ttl_s, actor=actor) or row
            await audit(conn, actor, "lti.session.resume", f"session:{session_id}",
                        {"platform": platform.id, "resource_link": resource_link_id})
            return LaunchSession(row, resumed=True)
        row = await sessions.create(conn, candidate=candidate, exam=exam, created_by=None, ttl_s=ttl_s)
        await conn.execute(
            "INSERT INTO lti_sessions (platform_id, deployment_id, resource_link_id, sub, session_id, context_title) "
            "VALUES ($1, $2, $3, $4, $5, $6)", platform.id, deployment_id, resource_link_id, sub, row["id"],
            context_title)
        await audit(conn, actor, "session.create", f"session:{row['id']}",
                    {"candidate": candidate, "exam": exam, "via": "lti", "platform": platform.id,
                     "deployment": deployment_id, "resource_link": resource_link_id})
    return LaunchSession(row, resumed=False)


async def staff_for_launch(conn: asyncpg.Connection, *, platform: Platform, sub: str,
                           display_name: str) -> tuple[accounts.User | None, bool]:
    """The staff account an instructor's launch signs in as: made on their first launch (role proctor, a random
    password nobody knows: they come in through the LMS), then the same one each time. (None, False) when an admin
    disabled it. The name is derived from the platform and `sub` only, never from what the LMS says the user is
    called, so no LMS user can take over an account made here by other means."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"proctor:lti_user:{platform.id}:{sub}")
        row = await conn.fetchrow(
            "SELECT u.id, u.name, u.role, u.disabled FROM lti_users l JOIN users u ON u.id = l.user_id "
            "WHERE l.platform_id = $1 AND l.sub = $2", platform.id, sub)
        if row is not None:
            if row["disabled"]:
                return None, False
            return accounts.User(row["id"], row["name"], row["role"]), False
        name = f"lti{platform.id}-{hashlib.sha256(sub.encode()).hexdigest()[:16]}"
        user = await accounts.create_user(conn, name, "proctor", secrets.token_urlsafe(32))
        await conn.execute("INSERT INTO lti_users (platform_id, sub, user_id) VALUES ($1, $2, $3)",
                           platform.id, sub, user.id)
        await audit(conn, f"lti:{platform.id}", "lti.user.create", f"user:{name}",
                    {"platform": platform.id, "issuer": platform.issuer, "sub": sub[:255],
                     "lms_name": display_name[:200]})
    return user, True
