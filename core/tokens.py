"""Signed, expiring join tokens, each bound to one session.

A token is `<payload>.<signature>`, both base64url: the payload holds the session id, the session's join
nonce and the expiry; the signature is HMAC-SHA256 under SECRET_KEY. The nonce is also stored on the session
row, so rotating it revokes every link issued before, and a token for one session never opens another.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class TokenError(ValueError):
    """A join token that is malformed, forged, expired or for another session."""


@dataclass(frozen=True)
class JoinClaims:
    session_id: str
    nonce: str
    expires_at: float


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def new_nonce() -> str:
    return secrets.token_urlsafe(12)


def _sign(key: bytes, payload: str) -> str:
    return _b64(hmac.new(key, b"join:" + payload.encode(), hashlib.sha256).digest())


def issue(key: bytes, session_id: str, nonce: str, expires_at: float) -> str:
    payload = _b64(json.dumps({"s": session_id, "n": nonce, "e": int(expires_at)}, separators=(",", ":")).encode())
    return f"{payload}.{_sign(key, payload)}"


def verify(key: bytes, token: str, *, now: float | None = None) -> JoinClaims:
    """Check signature and expiry; the caller still checks the nonce against the session row."""
    if not token or len(token) > 512 or token.count(".") != 1 or not token.isascii():
        raise TokenError("malformed join token")
    payload, signature = token.split(".")
    if not hmac.compare_digest(signature.encode(), _sign(key, payload).encode()):  # bytes: str must be ASCII
        raise TokenError("invalid join token")
    try:
        data = json.loads(_unb64(payload))
        claims = JoinClaims(str(data["s"]), str(data["n"]), float(data["e"]))
    except (ValueError, KeyError, TypeError):
        raise TokenError("malformed join token") from None
    if claims.expires_at < (time.time() if now is None else now):
        raise TokenError("join link expired")
    return claims


def for_session(key: bytes, session: Mapping[str, Any]) -> str:
    """The join token of a session row (its id, current nonce and expiry)."""
    return issue(key, str(session["id"]), session["join_nonce"], session["join_expires_at"].timestamp())
