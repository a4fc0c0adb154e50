"""Accounts from the shell: `proctor user add`, `proctor token create`; hashing and token checks."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import pytest

from proctor import accounts

ROOT = Path(__file__).resolve().parents[1]


def _cli(servers: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, **servers)
    return subprocess.run([sys.executable, "-m", "proctor", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60, input=stdin)


def test_user_add_and_token_create(servers: dict[str, str]) -> None:
    name = f"ops-{uuid.uuid4().hex[:6]}"
    # The password comes from stdin (or a prompt), never the command line (ps, shell history).
    result = _cli(servers, "user", "add", name, "--role", "admin", "--password-stdin", stdin="s3cret-enough\n")
    assert result.returncode == 0, result.stderr
    assert f"created admin {name}" in result.stdout
    again = _cli(servers, "user", "add", name, "--role", "admin", "--password-stdin", stdin="s3cret-enough\n")
    assert again.returncode == 2 and "exists" in again.stderr
    short = _cli(servers, "user", "add", f"x{name}", "--password-stdin", stdin="short\n")
    assert short.returncode == 2 and "at least 8" in short.stderr
    token = _cli(servers, "token", "create", name)
    assert token.returncode == 0, token.stderr
    last_line = token.stdout.strip().splitlines()[-1]
    assert last_line.startswith("pt_") and len(last_line) > 30
    assert "s3cret-enough" not in result.stdout + result.stderr + token.stdout + token.stderr


async def test_password_hash_and_token_lookup(conn: asyncpg.Connection) -> None:
    name = f"u-{uuid.uuid4().hex[:6]}"
    user = await accounts.create_user(conn, name, "proctor", "long enough pw")
    stored = await conn.fetchval("SELECT password_hash FROM users WHERE id = $1", user.id)
    assert stored.startswith("$argon2") and "long enough pw" not in stored
    assert await accounts.authenticate(conn, name, "long enough pw") == user
    assert await accounts.authenticate(conn, name, "wrong") is None
    assert await accounts.authenticate(conn, "nobody", "wrong") is None
    token = await accounts.create_token(conn, name)
    assert await conn.fetchval("SELECT count(*) FROM api_tokens WHERE token_hash = $1", token) == 0
    assert await accounts.user_for_token(conn, token) == user
    assert await accounts.user_for_token(conn, token + "x") is None
    with pytest.raises(accounts.AccountError):
        await accounts.create_user(conn, "bad name!", "proctor", "long enough pw")
    with pytest.raises(accounts.AccountError):
        await accounts.create_user(conn, f"r{name}", "root", "long enough pw")
