"""The web process: REST API, signaling, candidate pages, proctor and admin pages, /healthz."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp_jinja2
import jinja2
import redis.exceptions
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from analyzers.models import model_status
from core.net import parse_networks
from lti.routes import StaffPages
from lti.routes import setup_routes as setup_lti
from proctor import loop as event_loop
from proctor import metrics
from proctor.accounts import User
from proctor.context import Context
from proctor.db import DB_UNAVAILABLE
from proctor.http import CTX, USER, redact_path
from proctor.settings import Settings
from proctor.storage import StorageError
from proctor.store.nodes import live_nodes
from signaling.api import setup_routes as setup_signaling
from web import cookies
from web.admin import setup_routes as setup_admin
from web.admin_webhooks import setup_routes as setup_admin_webhooks
from web.auth import identify
from web.candidate import setup_routes as setup_candidate
from web.live import setup_routes as setup_live
from web.login import page_user, render_page
from web.login import setup_routes as setup_login
from web.media import setup_routes as setup_media
from web.openapi import setup_routes as setup_openapi
from web.proxy import CLIENT, forwarded
from web.report import setup_routes as setup_report
from web.staff import setup_routes as setup_staff
from webhooks.routes import setup_routes as setup_webhooks

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parent

SETTINGS = web.AppKey("settings", Settings)

# Every response without a policy of its own (JSON, errors, 404s, static files, the join error page, redirects)
# gets this one: nothing but our stylesheet and images may load, no script runs, no one may frame it. Pages that
# run scripts set their own, stricter for what they need (web/login.py CSP, web/candidate.py CANDIDATE_CSP).
DEFAULT_CSP = ("default-src 'none'; style-src 'self'; img-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
               "form-action 'none'")
# Seconds web.run_app gives requests still running at shutdown before cancelling them (live sockets are closed
# before that by web/live.py, within its CLOSE_GRACE_S).
SHUTDOWN_TIMEOUT_S = 5.0
_CORE = ("database", "redis", "storage")
# Where Prometheus discovers the media nodes to scrape (deploy/prometheus/prometheus.yml).
MEDIA_TARGETS_PATH = "/metrics/targets"


async def secure_defaults(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """on_response_prepare: a Content-Security-Policy and nosniff on every response that lacks them."""
    response.headers.setdefault("Content-Security-Policy", DEFAULT_CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")


async def healthz(request: web.Request) -> web.Response:
    """The status of each component (database, Redis, storage, each detector) and overall: 200 when a candidate
    can be taken, else 503 with `"ready": false` and the reason: a dependency is down (`status` "error"), or no
    media node is live yet (`status` "starting": right after a start, an offer would get "no media node has
    room"). Load balancers, `proctor up`'s banner and Kubernetes readiness wait on it. The detail (revision,
    timings, errors, model paths, media nodes) only for staff (a login cookie or an API token): it maps the
    deployment for whoever asks."""
    ctx = request.app[CTX]
    checks = await ctx.health()
    models = model_status(ctx.settings)
    down = [name for name in _CORE if checks[name]["status"] != "ok"]
    nodes = await _media_nodes(ctx) if not down else []
    body: dict[str, Any]
    if request.get(USER) is None:
        body = {name: {"status": checks[name]["status"]} for name in _CORE}
        body["models"] = {name: {"status": model["status"]} for name, model in models.items()}
    else:
        body = dict(checks)
        body["models"] = models
        body["media_nodes"] = nodes
    ready = not down and bool(nodes)
    body["ready"] = ready
    if down:
        body["status"], body["reason"] = "error", f"unavailable: {', '.join(down)}"
    elif not nodes:
        body["status"], body["reason"] = "starting", "no media node is live yet: candidates cannot join"
    else:
        body["status"] = "ok"
    return web.json_response(body, status=200 if ready else 503, headers={"Cache-Control": "no-store"})


async def media_targets(request: web.Request) -> web.Response:
    """Prometheus HTTP service discovery (`http_sd_configs`): the live media nodes' internal API addresses,
    where each serves /metrics. Nodes pick free ports and register them (MEDIA_NODE_PORT=0 when scaled), so no
    static list can name them. Guarded as /metrics is (METRICS_TOKEN, or loopback and METRICS_ALLOW)."""
    ctx = request.app[CTX]
    refused = metrics.refusal(ctx.settings, request)
    if refused is not None:
        return refused
    targets = sorted({urlsplit(node["url"]).netloc for node in await _media_nodes(ctx)} - {""})
    groups = [{"targets": targets, "labels": {"role": "media"}}] if targets else []
    return web.json_response(groups, headers={"Cache-Control": "no-store"})


async def _media_nodes(ctx: Context) -> list[dict[str, Any]]:
    try:
        return [node.public() for node in await live_nodes(ctx.redis)]
    except Exception as exc:  # Redis down is already reported above; keep /healthz answering
        log.debug("media node listing failed: %s", exc)
        return []


# DB_UNAVAILABLE's OSError also covers a vanished Redis unix socket.
_UNAVAILABLE: tuple[type[Exception], ...] = (
    redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, StorageError, *DB_UNAVAILABLE)


@web.middleware
async def unavailable(request: web.Request, handler: Any) -> web.StreamResponse:
    """A database or Redis outage is a 503 with Retry-After (the candidate page and integrations retry),
    never a 500; nothing already received is affected, the media nodes keep spooling."""
    try:
        return await handler(request)
    except _UNAVAILABLE as exc:
        log.warning("%s %s: dependency unavailable: %s", request.method, redact_path(request.path), exc)
        raise web.HTTPServiceUnavailable(
            text=json.dumps({"error": "temporarily unavailable, retry shortly"}), content_type="application/json",
            headers={"Retry-After": "2"}) from None


def create_app(settings: Settings, ctx: Context | None = None) -> web.Application:
    # The client's own address first, for everything after it (login throttling, audit, the access log).
    app = web.Application(client_max_size=12 * 1024 * 1024,
                          middlewares=[forwarded(parse_networks(settings.trusted_proxies)), unavailable, identify])
    app[SETTINGS] = settings
    app.on_response_prepare.append(secure_defaults)

    async def open_context(app: web.Application) -> Any:
        app[CTX] = ctx or await Context.open(settings)
        yield
        if ctx is None:
            await app[CTX].close()

    app.cleanup_ctx.append(open_context)
    aiohttp_jinja2.setup(app, loader=jinja2.FileSystemLoader(WEB_DIR / "templates"), autoescape=True)
    app.router.add_get("/healthz", healthz)
    app.router.add_get(MEDIA_TARGETS_PATH, media_targets)
    app.router.add_get(metrics.PATH, metrics.handler(settings, metrics.web_registry()))  # proctor/metrics.py
    app.router.add_static("/static", WEB_DIR / "static", append_version=False)
    setup_signaling(app)
    setup_candidate(app)
    setup_media(app)
    setup_login(app)
    setup_staff(app)
    setup_report(app)
    setup_live(app)
    setup_admin(app)
    setup_openapi(app)
    setup_admin_webhooks(app)
    setup_webhooks(app)
    setup_lti(app, StaffPages(page_user=page_user, render=render_page, sign_in=lti_sign_in))
    return app


def lti_sign_in(request: web.Request, response: web.StreamResponse, user: User) -> None:
    """An instructor's LTI launch signs them in as staff with the same cookie a password login sets (web/login.py)."""
    ctx = request.app[CTX]
    value, _ = cookies.issue(ctx.settings.signing_key(), user.id)
    secure = ctx.settings.base_url.startswith("https://") or request.scheme == "https"
    response.set_cookie(cookies.COOKIE, value, max_age=cookies.MAX_AGE_S, httponly=True, samesite="Lax",
                        secure=secure, path="/")


class AccessLogger(AbstractAccessLogger):
    """The access log at DEBUG (LOG_LEVEL=DEBUG shows it; at INFO the live monitor's polling would flood the
    log), with the join token cut out of /join/<token> and no query string or headers: nothing in it is a
    credential."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        client = request.get(CLIENT) or request.remote  # web/proxy.py: the client behind a trusted proxy
        self.logger.debug('%s "%s %s" %s %.1f ms', client, request.method, redact_path(request.path),
                          response.status, time * 1000)

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.DEBUG)


def runner_options() -> dict[str, Any]:
    """How the web process serves its app (keyword arguments of web.run_app and web.AppRunner)."""
    return {"access_log_class": AccessLogger, "access_log": logging.getLogger("aiohttp.access")}


def main(settings: Settings) -> None:
    app = create_app(settings)
    log.info("web listening on %s:%s (public %s)", settings.http_host, settings.http_port, settings.base_url)
    web.run_app(app, host=settings.http_host, port=settings.http_port, print=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S,
                loop=event_loop.new_event_loop(settings.event_loop), **runner_options())
