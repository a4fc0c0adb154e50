"""The signature scheme (the Stripe / Standard Webhooks shape), with the headers every delivery carries:

    Webhook-Id:        the event id (also the body's "id"): the same on every retry, for receivers to deduplicate
    Webhook-Timestamp: Unix seconds when this attempt was signed
    Webhook-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>

Receivers recompute the HMAC over the raw body bytes, compare in constant time and refuse a timestamp further
than a few minutes from their clock (a replayed capture). Several space-separated `v1=` values may come during a
secret rotation in future versions: accept any that matches.
"""

from __future__ import annotations

import hashlib
import hmac

TOLERANCE_S = 300


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of "<timestamp>.<body>" keyed by the endpoint's secret."""
    return hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def headers(event_id: str, secret: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {"Content-Type": "application/json", "User-Agent": "proctor-webhooks/1", "Webhook-Id": event_id,
            "Webhook-Timestamp": str(timestamp), "Webhook-Signature": f"v1={signature(secret, timestamp, body)}"}


def verify(secret: str, timestamp_header: str, signature_header: str, body: bytes, now: float,
           tolerance_s: int = TOLERANCE_S) -> bool:
    """True when one `v1=` signature matches and the timestamp is within `tolerance_s` of `now`."""
    try:
        timestamp = int(timestamp_header)
    except ValueError:
        return False
    if abs(now - timestamp) > tolerance_s:
        return False
    expected = signature(secret, timestamp, body)
    return any(hmac.compare_digest(part[3:], expected) for part in signature_header.split() if part.startswith("v1="))
