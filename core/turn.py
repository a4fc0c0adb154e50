"""Short-lived TURN credentials by the TURN REST API scheme (draft-uberti-behave-turn-rest, coturn's
`--use-auth-secret`): the TURN server and we share a secret, and every credential is derived from it, so no
static TURN password is ever written into a join page.

    username   = "<expiry, unix seconds>:<who>"          (coturn reads the timestamp before the colon)
    credential = base64(HMAC-SHA1(secret, username))

The server recomputes the credential from the username and refuses it once the expiry has passed (for new
allocations and refreshes alike), so a leaked page config stops working by itself.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class TurnCredential:
    username: str
    credential: str
    expires_at: int  # unix seconds


def turn_credential(secret: str, who: str, now: float, ttl_s: int) -> TurnCredential:
    """The credential for `who` (a session id: it shows in the TURN server's log) valid `ttl_s` from `now`.
    A colon in `who` is kept: coturn takes the timestamp from the first field only."""
    expires_at = int(now) + int(ttl_s)
    username = f"{expires_at}:{who}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return TurnCredential(username, base64.b64encode(digest).decode("ascii"), expires_at)


def turn_ice_server(urls: tuple[str, ...], secret: str, who: str, now: float, ttl_s: int) -> dict[str, Any]:
    """One RTCIceServer dict (as browsers and the settings' ICE_SERVERS take it) for `urls` with a fresh
    credential."""
    cred = turn_credential(secret, who, now, ttl_s)
    return {"urls": list(urls), "username": cred.username, "credential": cred.credential}


def ice_servers(static: tuple[dict[str, Any], ...], turn_urls: tuple[str, ...], secret: str, who: str,
                now: float, ttl_s: int) -> list[dict[str, Any]]:
    """The static ICE servers, then TURN with a fresh credential when TURN URLs and a secret are configured."""
    servers = [dict(s) for s in static]
    if turn_urls and secret:
        servers.append(turn_ice_server(turn_urls, secret, who, now, ttl_s))
    return servers
