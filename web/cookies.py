"""Staff login sessions in a signed cookie, and the CSRF tokens derived from them.

The cookie is `<user id>.<issued at>.<expires at>.<session id>.<signature>`: HMAC-SHA256 over the first four
fields with the app's signing key. Nothing secret is in it; the user is reloaded from Postgres on every request
(a disabled account stops working at once) and a logged-out session id is remembered in Redis until it would
have expired anyway. The CSRF token of a session is an HMAC of its session id under another label, so pages get
it from the server and a cross-site form cannot know it.

A device cookie (`proctor_device`, sent only to /login) is set at every successful login: `<user id>.<device id>.
<expires at>.<signature>`. It proves that this browser logged in to that account before, which exempts it from
the per-account and global login limits (web/login_throttle.py), so a flood of wrong passwords from elsewhere
does not lock the account's owner out.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from aiohttp import web

COOKIE = "proctor_session"
LOGIN_COOKIE = "proctor_login"  # pre-login CSRF nonce of the login form
MAX_AGE_S = 12 * 3600
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
REVOKED_KEY = "proctor:web:revoked:{sid}"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
DEVICE_COOKIE = "proctor_device"
DEVICE_MAX_AGE_S = 90 * 24 * 3600


@dataclass(frozen=True)
class DeviceClaims:
    user_id: int
    device_id: str
    expires_at: int


@dataclass(frozen=True)
class SessionClaims:
    user_id: int
    issued_at: int
    expires_at: int
    sid: str


# The login session of a request identified by its cookie (absent for Bearer tokens and anonymous requests).
SESSION: web.RequestKey[SessionClaims] = web.RequestKey("web_session", SessionClaims)

def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _mac(key: bytes, label: str, payload: str) -> str:
    return _b64(hmac.new(key, f"{label}|{payload}".encode(), hashlib.sha256).digest())


def issue(key: bytes, user_id: int, now: float | None = None, max_age_s: int = MAX_AGE_S) -> tuple[str, SessionClaims]:
    issued = int(now if now is not None else time.time())
    claims = SessionClaims(int(user_id), issued, issued + max_age_s, secrets.token_urlsafe(16))
    payload = f"{claims.user_id}.{claims.issued_at}.{claims.expires_at}.{claims.sid}"
    return f"{payload}.{_mac(key, 'session-v1', payload)}", claims


def verify(key: bytes, value: str | None, now: float | None = None) -> SessionClaims | None:
    """The claims of a well-signed, unexpired cookie value; None for anything else."""
    if not value or len(value) > 300 or not value.isascii():  # a cookie of other bytes is not ours
        return None
    parts = value.split(".")
    if len(parts) != 5:
        return None
    payload, signature = ".".join(parts[:4]), parts[4]
    if not hmac.compare_digest(signature.encode(), _mac(key, "session-v1", payload).encode()):
        return None
    try:
        claims = SessionClaims(int(parts[0]), int(parts[1]), int(parts[2]), parts[3])
    except ValueError:
        return None
    current = now if now is not None else time.time()
    if claims.expires_at <= current or claims.issued_at > current + 60:
        return None
    return claims


def csrf_token(key: bytes, sid: str) -> str:
    return _mac(key, "csrf-v1", sid)


def csrf_ok(key: bytes, sid: str, presented: str | None) -> bool:
    return bool(presented) and hmac.compare_digest(str(presented), csrf_token(key, sid))


def login_nonce() -> str:
    return secrets.token_urlsafe(16)


def login_csrf(key: bytes, nonce: str) -> str:
    return _mac(key, "login-csrf-v1", nonce)


def issue_device(key: bytes, user_id: int, now: float | None = None, max_age_s: int = DEVICE_MAX_AGE_S) -> str:
    """A new device cookie value for a browser that has just logged in to `user_id`."""
    expires = int(now if now is not None else time.time()) + max_age_s
    payload = f"{int(user_id)}.{secrets.token_urlsafe(12)}.{expires}"
    return f"{payload}.{_mac(key, 'device-v1', payload)}"


def verify_device(key: bytes, value: str | None, now: float | None = None) -> DeviceClaims | None:
    """The claims of a well-signed, unexpired device cookie; None for anything else."""
    if not value or len(value) > 200 or not value.isascii():  # compare_digest refuses other str
        return None
    parts = value.split(".")
    if len(parts) != 4:
        return None
    payload, signature = ".".join(parts[:3]), parts[3]
    if not hmac.compare_digest(signature, _mac(key, "device-v1", payload)):
        return None
    try:
        claims = DeviceClaims(int(parts[0]), parts[1], int(parts[2]))
    except ValueError:
        return None
    return claims if claims.expires_at > (now if now is not None else time.time()) else None
