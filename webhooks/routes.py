"""The admins' REST API for webhooks (admin role: a login cookie with its CSRF header, or an API token):

    GET    /api/webhooks                          every endpoint (never its secret), with pending/failed counts
    POST   /api/webhooks                          {"url", "event_types", "description"?, "enabled"?, "secret"?}
                                                  -> 201 the endpoint and its "secret" (generated when not given):
                                                  the only time it is served
    GET    /api/webhooks/{id}                     one endpoint
    PATCH  /api/webhooks/{id}                     any of url, event_types, description, enabled, secret, or
                                                  {"rotate_secret": true}: a new secret, served in this answer only
    DELETE /api/webhooks/{id}                     204; its pending deliveries stop
    POST   /api/webhooks/{id}/test                202 {"event_id"}: a `webhook.test` event to this endpoint
    GET    /api/webhooks/deliveries               the delivery log, newest first: ?endpoint_id=&state=&before=&limit=
    GET    /api/webhooks/{id}/deliveries          the same for one endpoint
    POST   /api/webhooks/deliveries/{id}/resend   202: a failed delivery gets a new round of attempts (409 otherwise)

Bad input is a 400 naming the field and why (webhooks.endpoints); every change is audit-logged by the store.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from proctor.http import CTX, error, path_int, read_json, require_admin
from proctor.store import webhooks as store
from webhooks.endpoints import EndpointError, EndpointInput, new_secret, parse
from webhooks.worker import policy

MAX_BODY = 16 * 1024
MAX_PAGE = 200


def _parse(request: web.Request, body: dict[str, Any], *, partial: bool) -> EndpointInput:
    try:
        return parse(body, policy(request.app[CTX]), partial=partial)
    except EndpointError as exc:
        raise error(web.HTTPBadRequest, str(exc)) from None


async def list_endpoints(request: web.Request) -> web.Response:
    require_admin(request)
    async with request.app[CTX].pool.acquire() as conn:
        rows = await store.list_endpoints(conn)
    return web.json_response([store.endpoint_to_json(r) for r in rows])


async def create_endpoint(request: web.Request) -> web.Response:
    admin = require_admin(request)
    data = _parse(request, await read_json(request, MAX_BODY), partial=False)
    secret = data.secret or new_secret()
    assert data.url is not None and data.event_types is not None
    async with request.app[CTX].pool.acquire() as conn, conn.transaction():
        row = await store.create_endpoint(conn, url=data.url, secret=secret, event_types=data.event_types,
                                          description=data.description or "", enabled=bool(data.enabled),
                                          actor=admin.name)
    return web.json_response({**store.endpoint_to_json(row), "secret": secret}, status=201)


def _endpoint_id(request: web.Request) -> int:
    return path_int(request, "webhook_id", "no such webhook endpoint")


async def get_endpoint(request: web.Request) -> web.Response:
    require_admin(request)
    async with request.app[CTX].pool.acquire() as conn:
        row = await store.get_endpoint(conn, _endpoint_id(request))
    if row is None:
        raise error(web.HTTPNotFound, "no such webhook endpoint")
    return web.json_response(store.endpoint_to_json(row))


async def update_endpoint(request: web.Request) -> web.Response:
    admin = require_admin(request)
    endpoint_id = _endpoint_id(request)
    body = await read_json(request, MAX_BODY)
    rotate = body.get("rotate_secret", False)
    if not isinstance(rotate, bool):
        raise error(web.HTTPBadRequest, "rotate_secret must be true or false")
    data = _parse(request, body, partial=True)
    if rotate and data.secret is not None:
        raise error(web.HTTPBadRequest, "give a secret or rotate_secret, not both")
    secret = new_secret() if rotate else data.secret
    async with request.app[CTX].pool.acquire() as conn, conn.transaction():
        row = await store.update_endpoint(conn, endpoint_id, actor=admin.name, url=data.url, secret=secret,
                                          event_types=data.event_types, description=data.description,
                                          enabled=data.enabled)
    if row is None:
        raise error(web.HTTPNotFound, "no such webhook endpoint")
    out = store.endpoint_to_json(row)
    if rotate:
        out["secret"] = secret
    return web.json_response(out)


async def delete_endpoint(request: web.Request) -> web.Response:
    admin = require_admin(request)
    async with request.app[CTX].pool.acquire() as conn, conn.transaction():
        deleted = await store.delete_endpoint(conn, _endpoint_id(request), actor=admin.name)
    if not deleted:
        raise error(web.HTTPNotFound, "no such webhook endpoint")
    return web.Response(status=204)


async def send_test(request: web.Request) -> web.Response:
    admin = require_admin(request)
    async with request.app[CTX].pool.acquire() as conn, conn.transaction():
        event_id = await store.send_test(conn, _endpoint_id(request), actor=admin.name)
    if event_id is None:
        raise error(web.HTTPNotFound, "no such webhook endpoint")
    return web.json_response({"event_id": event_id}, status=202)


def _query_int(request: web.Request, name: str, lo: int, hi: int) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    if not raw.isdigit() or len(raw) > 19 or not lo <= int(raw) <= hi:
        raise error(web.HTTPBadRequest, f"{name} must be a whole number from {lo} to {hi}")
    return int(raw)


async def _deliveries(request: web.Request, endpoint_id: int | None) -> web.Response:
    require_admin(request)
    if endpoint_id is None:
        endpoint_id = _query_int(request, "endpoint_id", 0, 2**63 - 1)
    state = request.query.get("state") or None
    if state is not None and state not in store.STATES:
        raise error(web.HTTPBadRequest, f"state must be one of {', '.join(store.STATES)}")
    before = _query_int(request, "before", 0, 2**63 - 1)
    limit = _query_int(request, "limit", 1, MAX_PAGE) or 50
    async with request.app[CTX].pool.acquire() as conn:
        rows = await store.list_deliveries(conn, endpoint_id=endpoint_id, state=state, before_id=before,
                                           limit=limit + 1)
    page = rows[:limit]
    return web.json_response({"deliveries": [store.delivery_to_json(r) for r in page],
                              "next_before": page[-1]["id"] if len(rows) > limit else None})


async def list_deliveries(request: web.Request) -> web.Response:
    return await _deliveries(request, None)


async def endpoint_deliveries(request: web.Request) -> web.Response:
    return await _deliveries(request, _endpoint_id(request))


async def resend(request: web.Request) -> web.Response:
    admin = require_admin(request)
    delivery_id = path_int(request, "delivery_id", "no such delivery")
    async with request.app[CTX].pool.acquire() as conn, conn.transaction():
        done = await store.resend(conn, delivery_id, actor=admin.name)
    if done is None:
        raise error(web.HTTPNotFound, "no such delivery")
    if not done:
        raise error(web.HTTPConflict, "only a failed delivery can be sent again")
    return web.json_response({"id": delivery_id, "state": "pending"}, status=202)


def setup_routes(app: web.Application) -> None:
    r = app.router
    # The fixed paths first: /api/webhooks/deliveries is not an endpoint id.
    r.add_get("/api/webhooks/deliveries", list_deliveries)
    r.add_post("/api/webhooks/deliveries/{delivery_id}/resend", resend)
    r.add_get("/api/webhooks", list_endpoints)
    r.add_post("/api/webhooks", create_endpoint)
    r.add_get("/api/webhooks/{webhook_id}", get_endpoint)
    r.add_patch("/api/webhooks/{webhook_id}", update_endpoint)
    r.add_delete("/api/webhooks/{webhook_id}", delete_endpoint)
    r.add_post("/api/webhooks/{webhook_id}/test", send_test)
    r.add_get("/api/webhooks/{webhook_id}/deliveries", endpoint_deliveries)
