"""Accounts: users with a role, Argon2 password hashes, bearer API tokens, and the audit log."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

import asyncpg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

ROLES = ("admin", "proctor")
_hasher = PasswordHasher()


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


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_new_user(name: str, role: str, password: str) -> None:
    if not name or len(name) > 64 or not all(c.isalnum() or c in "._@-" for c in name):
        raise AccountError("user name: 1-64 letters, digits or . _ @ -")
    if role not in ROLES:
        raise AccountError(f"role must be one of {', '.join(ROLES)}")
    if len(password) < 8:
        raise AccountError("password must be at least 8 characters")


async def create_user(conn: asyncpg.Connection, name: str, role: str, password: str) -> User:
    check_new_user(name, role, password)
    try:
        row = await conn.fetchrow(
            "INSERT INTO users (name, role, password_hash) VALUES ($1, $2, $3) RETURNING id, name, role",
            name, role, hash_password(password))
    except asyncpg.UniqueViolationError:
        raise AccountError(f"user {name!r} exists") from None
    await audit(conn, "system", "user.create", f"user:{name}", {"role": role})
    return User(row["id"], row["name"], row["role"])


async def authenticate(conn: asyncpg.Connection, name: str, password: str) -> User | None:
    row = await conn.fetchrow("SELECT id, name, role, password_hash, disabled FROM users WHERE name = $1", name)
    if row is None:
        _hasher.hash(password)  # same cost whether or not the name exists
        return None
    if row["disabled"] or not verify_password(row["password_hash"], password):
        return None
    await conn.execute("UPDATE users SET last_login_at = now() WHERE id = $1", row["id"])
    return User(row["id"], row["name"], row["role"])


async def create_token(conn: asyncpg.Connection, user_name: str, token_name: str = "api") -> str:
    user_id = await conn.fetchval("SELECT id FROM users WHERE name = $1", user_name)
    if user_id is None:
        raise AccountError(f"no user {user_name!r}")
    token = "pt_" + secrets.token_urlsafe(32)
    await conn.execute("INSERT INTO api_tokens (user_id, name, token_hash) VALUES ($1, $2, $3)",
                       user_id, token_name, token_digest(token))
    await audit(conn, "system", "token.create", f"user:{user_name}", {"name": token_name})
    return token


async def user_for_token(conn: asyncpg.Connection, token: str) -> User | None:
    row = await conn.fetchrow(
        "UPDATE api_tokens t SET last_used_at = now() FROM users u "
        "WHERE t.token_hash = $1 AND t.revoked_at IS NULL AND u.id = t.user_id AND NOT u.disabled "
        "RETURNING u.id, u.name, u.role", token_digest(token))
    return User(row["id"], row["name"], row["role"]) if row else None


async def audit(conn: asyncpg.Connection, actor: str, action: str, target: str | None,
                details: dict[str, Any] | None = None) -> None:
    await conn.execute("INSERT INTO audit_log (actor, action, target, details) VALUES ($1, $2, $3, $4)",
                       actor, action, target, details or {})
