"""A webhook receiver for the proctoring server: checks each delivery's signature and timestamp, skips repeats.

    pip install aiohttp
    WEBHOOK_SECRET=whsec_... python webhook_receiver.py --port 9000

Register http(s)://<this host>:9000/webhooks as an endpoint (admin page "Webhooks", or POST /api/webhooks) with
the secret it showed you. Every delivery is a POST with a JSON body and

    Webhook-Id:        the event id (the body's "id"; the same on every retry: deduplicate on it)
    Webhook-Timestamp: Unix seconds when it was signed
    Webhook-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<raw body>")>

Answer 2xx quickly (do slow work after answering); anything else, or no answer within the server's timeout,
is retried later with growing pauses. This file depends on aiohttp and the standard library only.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

TOLERANCE_S = 300  # refuse deliveries signed more than 5 minutes from our clock: a replayed capture

Handler = Callable[[dict[str, Any]], Awaitable[None]]


def verify(secret: str, body: bytes, timestamp: str, signature_header: str, now: float | None = None) -> str | None:
    """None when the delivery is genuine and fresh, else why not."""
    try:
        ts = int(timestamp)
    except ValueError:
        return "bad timestamp"
    if abs((time.time() if now is None else now) - ts) > TOLERANCE_S:
        return "timestamp outside the tolerance"
    expected = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    for part in signature_header.split():
        if part.startswith("v1=") and hmac.compare_digest(part[3:], expected):
            return None
    return "signature mismatch"


def make_app(secret: str, on_event: Handler, path: str = "/webhooks") -> web.Application:
    seen: OrderedDict[str, None] = OrderedDict()  # recent event ids: a retry of one we processed is a no-op

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()  # the raw bytes: the signature is over them, not over re-encoded JSON
        problem = verify(secret, body, request.headers.get("Webhook-Timestamp", ""),
                         request.headers.get("Webhook-Signature", ""))
        if problem is not None:
            return web.json_response({"error": problem}, status=400)
        event = json.loads(body)
        if event["id"] in seen:
            return web.json_response({"ok": True, "duplicate": True})
        seen[event["id"]] = None
        while len(seen) > 10_000:
            seen.popitem(last=False)
        await on_event(event)
        return web.json_response({"ok": True})

    app = web.Application(client_max_size=1024 * 1024)
    app.router.add_post(path, receive)
    return app


async def print_event(event: dict[str, Any]) -> None:
    data = event["data"]
    session = data.get("session") or {}
    print(f"{event['created_at']} {event['type']} {event['id']} session={session.get('id')} "
          f"{json.dumps({k: v for k, v in data.items() if k != 'session'})}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args()
    secret = os.environ.get("WEBHOOK_SECRET", "")
    if not secret:
        raise SystemExit("set WEBHOOK_SECRET to the endpoint's secret")
    web.run_app(make_app(secret, print_event), host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()
