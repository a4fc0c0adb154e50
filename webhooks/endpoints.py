"""What an admin may register as a webhook endpoint, checked before anything is stored: every problem is a
EndpointError whose message says what and why (the API answers 400 with it, the admin page shows it)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from proctor.store.webhooks import EVENT_TYPES
from webhooks.ssrf import Policy, host_refusal

MAX_URL = 2048
MAX_DESCRIPTION = 200
MIN_SECRET, MAX_SECRET = 16, 256


class EndpointError(ValueError):
    """Input that cannot be registered; the message says which field and why."""


@dataclass(frozen=True)
class EndpointInput:
    """Checked input; None: not given (a partial update keeps it)."""

    url: str | None = None
    event_types: list[str] | None = None
    description: str | None = None
    enabled: bool | None = None
    secret: str | None = None


def new_secret() -> str:
    """A signing secret: 256 random bits, prefixed so people recognise it in a config file."""
    return "whsec_" + secrets.token_urlsafe(32)


def check_url(raw: Any, policy: Policy) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise EndpointError("url is required: an http:// or https:// URL")
    url = raw.strip()
    if len(url) > MAX_URL:
        raise EndpointError(f"url must be at most {MAX_URL} characters, got {len(url)}")
    if not url.isascii() or any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise EndpointError("url must be printable ASCII without spaces or control characters "
                            "(write international domain names in punycode)")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise EndpointError(f"url is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise EndpointError(f"url must start with http:// or https://, got {parts.scheme or 'no'} scheme")
    if not parts.hostname:
        raise EndpointError("url has no host")
    if parts.username is not None or parts.password is not None:
        raise EndpointError("url must not carry a user name or password (the signature authenticates us)")
    if port == 0:
        raise EndpointError("url port must be between 1 and 65535")
    why = host_refusal(parts.hostname, policy)
    if why is not None:
        raise EndpointError(f"url refused: {why}; webhooks may not reach loopback, private, link-local or metadata "
                            "addresses unless WEBHOOK_ALLOW_PRIVATE or WEBHOOK_ALLOWED_NETWORKS allows it")
    return url


def check_event_types(raw: Any) -> list[str]:
    if not isinstance(raw, list) or not raw or not all(isinstance(t, str) for t in raw):
        raise EndpointError(f"event_types must be a non-empty list of: {', '.join(EVENT_TYPES)}")
    unknown = [t for t in raw if t not in EVENT_TYPES]
    if unknown:
        shown = ", ".join(repr(t[:40]) for t in unknown[:5])
        raise EndpointError(f"event_types: unknown type(s) {shown}; choose from {', '.join(EVENT_TYPES)}")
    return [t for t in EVENT_TYPES if t in raw]  # one each, in a fixed order


def check_secret(raw: Any) -> str:
    if not isinstance(raw, str) or not MIN_SECRET <= len(raw) <= MAX_SECRET:
        raise EndpointError(f"secret must be a string of {MIN_SECRET} to {MAX_SECRET} characters "
                            "(leave it out to have one generated)")
    if not raw.isascii() or not raw.isprintable() or " " in raw:
        raise EndpointError("secret must be printable ASCII without spaces")
    return raw


def check_description(raw: Any) -> str:
    if not isinstance(raw, str):
        raise EndpointError("description must be a string")
    text = raw.strip()
    if len(text) > MAX_DESCRIPTION:
        raise EndpointError(f"description must be at most {MAX_DESCRIPTION} characters, got {len(text)}")
    if "\x00" in text or not text.isprintable():
        raise EndpointError("description must be printable text (no NUL or control characters)")
    return text


def parse(body: dict[str, Any], policy: Policy, *, partial: bool) -> EndpointInput:
    """A create (partial=False: url and event_types required) or update body as checked input."""
    known = {"url", "event_types", "description", "enabled", "secret"} | ({"rotate_secret"} if partial else set())
    extra = sorted(set(body) - known)
    if extra:
        raise EndpointError(f"unknown field(s): {', '.join(repr(k[:40]) for k in extra[:5])}")
    enabled = body.get("enabled")
    if enabled is not None and not isinstance(enabled, bool):
        raise EndpointError("enabled must be true or false")
    if not partial:
        enabled = True if enabled is None else enabled
    return EndpointInput(
        url=check_url(body.get("url"), policy) if "url" in body or not partial else None,
        event_types=check_event_types(body.get("event_types")) if "event_types" in body or not partial else None,
        description=check_description(body["description"]) if body.get("description") is not None
        else (None if partial else ""),
        enabled=enabled,
        secret=check_secret(body["secret"]) if body.get("secret") is not None else None)
