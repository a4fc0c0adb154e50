"""One delivery attempt: POST the signed body to the endpoint and say how it went.

- The host is resolved once, here; every address it resolves to must pass webhooks.ssrf (one bad address refuses
  the lot: a name that mixes a public and a loopback address is an attack, not a misconfiguration), and the
  connection goes to the addresses checked, through a resolver that hands aiohttp exactly those (no second
  lookup a rebinding DNS server could answer differently).
- One timeout bounds connect and read together (WEBHOOK_TIMEOUT_S); redirects are not followed (a 3xx is a
  failed attempt that names the Location); at most MAX_RESPONSE_BYTES of the answer are read, for the log.
- No cookies, no proxy from the environment, a fresh connection per attempt.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from webhooks import signing
from webhooks.ssrf import Policy, refusal

MAX_RESPONSE_BYTES = 4096


@dataclass(frozen=True)
class Outcome:
    """How one attempt went: `error` None means delivered (a 2xx)."""

    status: int | None
    error: str | None
    retry: bool = True  # False: no point trying again (an address we may never reach)


class Refused(Exception):
    """The host resolves to an address webhooks may not reach."""


class _Pinned(AbstractResolver):
    """aiohttp's resolver for one connection: the addresses we already resolved and checked, nothing else."""

    def __init__(self, results: list[ResolveResult]) -> None:
        self.results = results

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        return [dict(r, hostname=host, port=port) for r in self.results]  # type: ignore[misc]

    async def close(self) -> None:
        pass


async def resolve_checked(host: str, port: int, policy: Policy) -> list[ResolveResult]:
    """Every address `host` resolves to, if all of them may be reached; Refused naming the first that may not."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise OSError(f"cannot resolve {host}: {exc.strerror}") from None
    results: list[ResolveResult] = []
    for family, _type, proto, _canon, sockaddr in infos:
        address = str(sockaddr[0])
        why = refusal(ipaddress.ip_address(address.split("%", 1)[0]), policy)
        if why is not None:
            shown = host if host == address else f"{host} resolves to {address}, which"
            raise Refused(f"refused: {shown} is {why} (WEBHOOK_ALLOW_PRIVATE / WEBHOOK_ALLOWED_NETWORKS)")
        results.append({"hostname": host, "host": address, "port": port, "family": family, "proto": proto,
                        "flags": socket.AI_NUMERICHOST})
    if not results:
        raise OSError(f"cannot resolve {host}: no addresses")
    return results


async def send(url: str, event_id: str, secret: str, body: bytes, *, policy: Policy, timeout_s: float) -> Outcome:
    """POST `body` to `url`, signed now; never raises for what the endpoint or the network does."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    headers = signing.headers(event_id, secret, int(time.time()), body)
    try:
        results = await asyncio.wait_for(resolve_checked(host, port, policy), timeout_s)
    except Refused as exc:
        return Outcome(None, str(exc), retry=False)
    except (OSError, TimeoutError) as exc:
        return Outcome(None, str(exc) or f"cannot resolve {host} within {timeout_s:g} s")
    connector = aiohttp.TCPConnector(resolver=_Pinned(results), use_dns_cache=False, force_close=True, limit=1)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=timeout, cookie_jar=aiohttp.DummyCookieJar(),
                                         trust_env=False, auto_decompress=False) as http, \
                http.post(url, data=body, headers=headers, allow_redirects=False) as response:
            excerpt = (await response.content.read(MAX_RESPONSE_BYTES)).decode("utf-8", "replace")
            status = response.status
            if 200 <= status < 300:
                return Outcome(status, None)
            if 300 <= status < 400:
                location = response.headers.get("Location", "")[:300]
                return Outcome(status, f"HTTP {status} redirect to {location!r} not followed")
            return Outcome(status, f"HTTP {status}: {' '.join(excerpt.split())[:300]}")
    except TimeoutError:
        return Outcome(None, f"timed out after {timeout_s:g} s")
    except aiohttp.ClientError as exc:
        return Outcome(None, f"{type(exc).__name__}: {exc}"[:500])
    except OSError as exc:
        return Outcome(None, f"{type(exc).__name__}: {exc}"[:500])
