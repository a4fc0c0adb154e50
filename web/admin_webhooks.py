"""The admin page for webhooks (GET /admin/webhooks): the endpoints (add one, enable, disable, delete, send a test
event) and the delivery log (send a failed delivery again). The same as /api/webhooks (webhooks/routes.py), as
plain HTML forms carrying the page's CSRF token (checked by web.auth.identify). Admins only; the store
audit-logs every change. Kept beside web/admin.py (users and tokens), with the same admin check.
"""

from __future__ import annotations

from aiohttp import web

from proctor import accounts
from proctor.http import CTX, path_int, read_form
from proctor.store import webhooks as webhook_store
from web.login import page_user, render_page
from webhooks.endpoints import EndpointError, new_secret
from webhooks.endpoints import parse as parse_endpoint
from webhooks.worker import policy as webhook_policy

WEBHOOK_DONE = {
    "enabled": "Endpoint enabled: new events are delivered to it.",
    "disabled": "Endpoint disabled: nothing more is delivered to it (test events still are).",
    "deleted": "Endpoint deleted, with its delivery log.",
    "tested": "Test event queued: it shows in the delivery log below within seconds.",
    "resent": "Delivery queued again: a new round of attempts starts now.",
    "not_failed": "Only a failed delivery can be sent again.",
}
WEBHOOK_LOG_ROWS = 100


def _admin(request: web.Request) -> accounts.User:
    user = page_user(request)
    if not user.is_admin:
        raise web.HTTPForbidden(text="admin role required")
    return user


async def _webhooks_page(request: web.Request, *, status: int = 200, error: str | None = None,
                         created: dict[str, object] | None = None, form: dict[str, object] | None = None
                         ) -> web.Response:
    async with request.app[CTX].pool.acquire() as conn:
        endpoints = await webhook_store.list_endpoints(conn)
        deliveries = await webhook_store.list_deliveries(conn, limit=WEBHOOK_LOG_ROWS)
    return render_page("admin_webhooks.html", request, {
        "nav": "webhooks", "endpoints": endpoints, "deliveries": deliveries, "event_types": webhook_store.EVENT_TYPES,
        "done": WEBHOOK_DONE.get(request.query.get("done", "")), "error": error, "created": created,
        "form": form or {"event_types": list(webhook_store.EVENT_TYPES), "enabled": True}}, status=status)


async def webhooks_page(request: web.Request) -> web.Response:
    _admin(request)
    return await _webhooks_page(request)


async def create_webhook(request: web.Request) -> web.Response:
    """The form's fields as the API's body; the secret (given or generated) is shown on this answer only."""
    admin = _admin(request)
    fields = await read_form(request)
    body: dict[str, object] = {"url": fields.get("url", ""), "event_types": fields.getall("event_types", []),
                               "description": fields.get("description", ""), "enabled": "enabled" in fields}
    if fields.get("secret", "").strip():
        body["secret"] = fields.get("secret", "").strip()
    try:
        data = parse_endpoint(body, webhook_policy(request.app[CTX]), partial=False)
    except EndpointError as exc:
        return await _webhooks_page(request, status=400, error=str(exc), form={**body, "secret": ""})
    secret = data.secret or new_secret()
    assert data.url is not None and data.event_types is not None
    async with request.app[CTX].pool.acquire() as conn, conn.transaction():
        row = await webhook_store.create_endpoint(conn, url=data.url, secret=secret, event_types=data.event_types,
                                                  description=data.description or "", enabled=bool(data.enabled),
                                                  actor=admin.name)
    return await _webhooks_page(request, status=201, created={"id": row["id"], "url": row["url"], "secret": secret})


def _webhooks_back(done: str) -> web.HTTPSeeOther:
    return web.HTTPSeeOther(f"/admin/webhooks?done={done}")


async def webhook_action(request: web.Request) -> web.Response:
    admin = _admin(request)
    endpoint_id = path_int(request, "webhook_id", "no such webhook endpoint")
    action = request.match_info["action"]
    async with request.app[CTX].pool.acquire() as conn, conn.transaction():
        if action == "delete":
            found = await webhook_store.delete_endpoint(conn, endpoint_id, actor=admin.name)
        elif action == "test":
            found = await webhook_store.send_test(conn, endpoint_id, actor=admin.name) is not None
        else:
            found = await webhook_store.update_endpoint(conn, endpoint_id, actor=admin.name,
                                                        enabled=action == "enable") is not None
    if not found:
        raise web.HTTPNotFound(text="no such webhook endpoint")
    raise _webhooks_back({"delete": "deleted", "test": "tested", "enable": "enabled"}.get(action, "disabled"))


async def webhook_resend(request: web.Request) -> web.Response:
    admin = _admin(request)
    delivery_id = path_int(request, "delivery_id", "no such delivery")
    async with request.app[CTX].pool.acquire() as conn, conn.transaction():
        done = await webhook_store.resend(conn, delivery_id, actor=admin.name)
    if done is None:
        raise web.HTTPNotFound(text="no such delivery")
    raise _webhooks_back("resent" if done else "not_failed")


def setup_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/admin/webhooks", webhooks_page)
    r.add_post("/admin/webhooks", create_webhook)
    r.add_post("/admin/webhooks/deliveries/{delivery_id}/resend", webhook_resend)
    r.add_post("/admin/webhooks/{webhook_id}/{action:enable|disable|delete|test}", webhook_action)
