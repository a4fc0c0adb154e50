"""Accounts: users with a role, Argon2 password hashes, bearer API tokens, disabling and revoking, and the audit log.

Argon2 is deliberately slow (tens to hundreds of milliseconds of CPU): every hash and verify runs on a small
process-wide thread pool (argon2-cffi releases the GIL), never on the event loop, so a burst of logins cannot
stall other requests. A login for an unknown or disabled account verifies against a dummy hash, so the answer
costs the same as a wrong password for an existing one and tells nothing about which names exist.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

ROLES = ("admin", "proctor")
MAX_LABEL = 100
MAX_PASSWORD = 1024  # what the login form accepts
PASSWORD_LINK_TTL_S = 72 * 3600  # a new colleague may not read their mail the same day
# Threads that hash and verify passwords, for the whole process. Each Argon2 call holds 64 MiB and already runs
# its 4 lanes on threads of its own (parallelism=4), so one call at a time per two cores keeps them busy; more
# would only queue inside the kernel, and the event loop's thread would wait longer for a core.
HASH_THREADS = max(1, min(4, (os.cpu_count() or 2) // 2))
_hasher = PasswordHasher()
_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()
_dummy_hash: str | None = None

T = TypeVar("T")


class AccountError(ValueError):
    pass


@dataclass(frozen=True)
class User:
    id: int
    name: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def _pool() -> ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=HASH_THREADS, thread_name_prefix="argon2")
        return _executor


async def _off_loop(fn: Callable[..., T], *args: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(_pool(), fn, *args)


async def hash_password_async(password: str) -> str:
    """hash_password on the hashing threads (the event loop stays free)."""
    return await _off_loop(hash_password, password)


def _dummy() -> str:
    global _dummy_hash
    if _dummy_hash is None:
        _dummy_hash = _hasher.hash(secrets.token_urlsafe(24))  # same parameters as every real hash
    return _dummy_hash


async def check_password(password_hash: str | None, password: str) -> bool:
    """Verify on the hashing threads. None (no usable account) costs one verify against a dummy hash too,
    and is always False."""
    if password_hash is None:
        await _off_loop(lambda: verify_password(_dummy(), password))
        return False
    return await _off_loop(verify_password, password_hash, password)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_new_user(name: str, role: str, password: str) -> None:
    if not name or len(name) > 64 or not all(c.isalnum() or c in "._@-" for c in name):
        raise AccountError("user name: 1-64 letters, digits or . _ @ -")
    if role not in ROLES:
        raise AccountError(f"role must be one of {', '.join(ROLES)}")
    if len(password) < 8:
        raise AccountError("password must be at least 8 characters")


async def create_user(conn: asyncpg.Connection, name: str, role: str, password: str, actor: str = "system") -> User:
    check_new_user(name, role, password)
    password_hash = await hash_password_async(password)
    try:
        row = await conn.fetchrow(
            "INSERT INTO users (name, role, password_hash) VALUES ($1, $2, $3) RETURNING id, name, role",
            name, role, password_hash)
    except asyncpg.UniqueViolationError:
        raise AccountError(f"user {name!r} exists") from None
    await audit(conn, actor, "user.create", f"user:{name}", {"role": role})
    return User(row["id"], row["name"], row["role"])


async def login_account(db: asyncpg.Pool | asyncpg.Connection, name: str) -> asyncpg.Record | None:
    """The account a login names (id, name, role, password_hash, disabled), or None. A pool is used for one
    short query: no connection is held while the password is checked."""
    if not name:
        return None
    return await db.fetchrow("SELECT id, name, role, password_hash, disabled FROM users WHERE name = $1", name)


async def check_login(db: asyncpg.Pool | asyncpg.Connection, account: asyncpg.Record | None,
                      password: str) -> User | None:
    """The user if `password` is right for an enabled account; the same work (one Argon2 verify) whether the
    account exists, is disabled, or the password is wrong."""
    usable = account is not None and not account["disabled"]
    ok = await check_password(account["password_hash"] if usable and account is not None else None, password)
    if not ok or account is None:
        return None
    await db.execute("UPDATE users SET last_login_at = now() WHERE id = $1", account["id"])
    return User(account["id"], account["name"], account["role"])


async def authenticate(db: asyncpg.Pool | asyncpg.Connection, name: str, password: str) -> User | None:
    return await check_login(db, await login_account(db, name), password)


async def set_disabled(conn: asyncpg.Connection, name: str, disabled: bool, actor: str = "system") -> bool:
    """Disable (or enable again) an account. A disabled account cannot log in, and its login cookies and API
    tokens stop working at once (checked on every request); enabling it again brings back the tokens it had
    (revoke them with `revoke_token`). False: it already was so. Audit-logged."""
    row = await conn.fetchrow("UPDATE users SET disabled = $2 WHERE name = $1 AND disabled <> $2 RETURNING id",
                              name, disabled)
    if row is None:
        if await conn.fetchval("SELECT id FROM users WHERE name = $1", name) is None:
            raise AccountError(f"no user {name!r}")
        return False
    await audit(conn, actor, "user.disable" if disabled else "user.enable", f"user:{name}")
    return True


async def list_users(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return list(await conn.fetch(
        "SELECT id, name, role, disabled, created_at, last_login_at FROM users ORDER BY name"))


async def create_token(conn: asyncpg.Connection, user_name: str, token_name: str = "api", actor: str = "system") -> str:
    """A new bearer API token for the user (returned once: only its SHA-256 is stored). Audit-logged."""
    check_label(token_name)
    user_id = await conn.fetchval("SELECT id FROM users WHERE name = $1", user_name)
    if user_id is None:
        raise AccountError(f"no user {user_name!r}")
    token = "pt_" + secrets.token_urlsafe(32)
    await conn.execute("INSERT INTO api_tokens (user_id, name, token_hash) VALUES ($1, $2, $3)",
                       user_id, token_name, token_digest(token))
    await audit(conn, actor, "token.create", f"user:{user_name}", {"name": token_name})
    return token


async def list_tokens(conn: asyncpg.Connection, user_name: str | None = None) -> list[asyncpg.Record]:
    """API tokens (never the token itself: only its hash is stored) with their user, newest first."""
    if user_name is not None and await conn.fetchval("SELECT id FROM users WHERE name = $1", user_name) is None:
        raise AccountError(f"no user {user_name!r}")
    return list(await conn.fetch(
        "SELECT t.id, u.name AS user_name, t.name, t.created_at, t.last_used_at, t.revoked_at "
        "FROM api_tokens t JOIN users u ON u.id = t.user_id WHERE ($1::text IS NULL OR u.name = $1) "
        "ORDER BY t.id DESC", user_name))


async def revoke_token(conn: asyncpg.Connection, token_id: int, actor: str = "system") -> bool:
    """Revoke an API token for good (it answers 401 from the next request on). False: already revoked.
    Audit-logged."""
    row = await conn.fetchrow(
        "UPDATE api_tokens t SET revoked_at = now() FROM users u WHERE t.id = $1 AND t.revoked_at IS NULL "
        "AND u.id = t.user_id RETURNING u.name AS user_name, t.name", token_id)
    if row is None:
        if await conn.fetchval("SELECT id FROM api_tokens WHERE id = $1", token_id) is None:
            raise AccountError(f"no API token {token_id}")
        return False
    await audit(conn, actor, "token.revoke", f"user:{row['user_name']}", {"token_id": token_id, "name": row["name"]})
    return True


async def user_for_token(conn: asyncpg.Connection, token: str) -> User | None:
    """The user of a current API token: not revoked, and its user not disabled."""
    row = await conn.fetchrow(
        "UPDATE api_tokens t SET last_used_at = now() FROM users u "
        "WHERE t.token_hash = $1 AND t.revoked_at IS NULL AND u.id = t.user_id AND NOT u.disabled "
        "RETURNING u.id, u.name, u.role", token_digest(token))
    return User(row["id"], row["name"], row["role"]) if row else None


def check_label(label: str) -> None:
    """An API token's label: what the token is for, as the token lists show it."""
    if not label.strip() or len(label) > MAX_LABEL or not label.isprintable():
        raise AccountError(f"token label: 1-{MAX_LABEL} printable characters")


async def _enabled_admins(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM users WHERE role = 'admin' AND NOT disabled"))


async def set_role(conn: asyncpg.Connection, name: str, role: str, actor: str = "system") -> bool:
    """Give an account another role (it applies from its next request: roles are read on every request). The
    last enabled admin keeps the role, so the server always has someone who can manage it. False: it already had
    it. Audit-logged with the old role."""
    if role not in ROLES:
        raise AccountError(f"role must be one of {', '.join(ROLES)}")
    async with conn.transaction():
        # Lock the enabled admins' rows, so two admins demoting each other at once cannot leave none.
        await conn.execute("SELECT id FROM users WHERE role = 'admin' AND NOT disabled FOR UPDATE")
        row = await conn.fetchrow("SELECT role, disabled FROM users WHERE name = $1", name)
        if row is None:
            raise AccountError(f"no user {name!r}")
        if row["role"] == role:
            return False
        if row["role"] == "admin" and not row["disabled"] and await _enabled_admins(conn) <= 1:
            raise AccountError("the last enabled admin keeps the admin role (make another admin first)")
        await conn.execute("UPDATE users SET role = $2 WHERE name = $1", name, role)
        await audit(conn, actor, "user.role", f"user:{name}", {"from": row["role"], "to": role})
    return True


# --- password links: how an admin gives a new or locked-out user a password without ever knowing it -----------

def _link_key(secret: bytes) -> bytes:
    # For this use only: a password link is never a join link, cookie or cursor, whatever its bytes.
    return hmac.new(secret, b"proctor password link v1", hashlib.sha256).digest()


def _link_mac(secret: bytes, user_id: int, expires: int, password_hash: str) -> str:
    # Bound to the current password hash: setting a password (or issuing a newer link, which sets a new random
    # one) makes the link useless, so each link works once.
    message = f"{user_id}.{expires}.".encode() + hashlib.sha256(password_hash.encode()).digest()
    return base64.urlsafe_b64encode(hmac.new(_link_key(secret), message, hashlib.sha256).digest()).rstrip(b"=").decode()


async def issue_password_link(conn: asyncpg.Connection, secret: bytes, name: str, actor: str,
                              ttl_s: int = PASSWORD_LINK_TTL_S, action: str = "user.password_reset") -> str:
    """A one-time token that lets the account's owner choose a new password (for `/password/<token>`).

    The account's password is replaced by a random one nobody knows at once: the old password stops working (a
    reset is often because it leaked), and any earlier link for the account is void. Audit-logged."""
    new_hash = await hash_password_async(secrets.token_urlsafe(32))
    row = await conn.fetchrow("UPDATE users SET password_hash = $2 WHERE name = $1 RETURNING id", name, new_hash)
    if row is None:
        raise AccountError(f"no user {name!r}")
    expires = int(time.time()) + ttl_s
    await audit(conn, actor, action, f"user:{name}", {"expires": expires})
    return f"{row['id']}.{expires}.{_link_mac(secret, row['id'], expires, new_hash)}"


async def password_link_account(conn: asyncpg.Connection, secret: bytes, token: str) -> asyncpg.Record:
    """The account (id, name, password_hash) a password link is for; AccountError("expired") or AccountError
    ("invalid") when it is not a current link (used, superseded, tampered, or its account disabled)."""
    parts = token.split(".")
    if len(parts) != 3 or not all(p.isascii() for p in parts) or not parts[0].isdecimal() \
            or not parts[1].isdecimal() or len(parts[0]) > 12 or len(parts[1]) > 12:
        raise AccountError("invalid")
    user_id, expires = int(parts[0]), int(parts[1])
    row = await conn.fetchrow("SELECT id, name, password_hash, disabled FROM users WHERE id = $1", user_id)
    if row is None or row["disabled"] or not hmac.compare_digest(
            parts[2].encode(), _link_mac(secret, user_id, expires, row["password_hash"]).encode()):
        raise AccountError("invalid")
    if expires < time.time():
        raise AccountError("expired")
    return row


async def use_password_link(conn: asyncpg.Connection, secret: bytes, token: str, password: str) -> str:
    """Set the password a link allows (once), and return the account's name. AccountError as
    `password_link_account`, or for a password that is too short or too long."""
    check_password_text(password)
    row = await password_link_account(conn, secret, token)
    new_hash = await hash_password_async(password)
    # Compare-and-set on the hash the link was made for: two uses at once, only one wins.
    done = await conn.fetchval("UPDATE users SET password_hash = $3 WHERE id = $1 AND password_hash = $2 "
                               "RETURNING name", row["id"], row["password_hash"], new_hash)
    if done is None:
        raise AccountError("invalid")
    await audit(conn, done, "user.password_set", f"user:{done}")
    return str(done)


def check_password_text(password: str) -> None:
    if len(password) < 8 or len(password) > MAX_PASSWORD:
        raise AccountError(f"password must be 8 to {MAX_PASSWORD} characters")


async def audit(conn: asyncpg.Connection, actor: str, action: str, target: str | None,
                details: dict[str, Any] | None = None) -> None:
    await conn.execute("INSERT INTO audit_log (actor, action, target, details) VALUES ($1, $2, $3, $4)",
                       actor, action, target, details or {})
