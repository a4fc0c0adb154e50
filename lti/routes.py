"""The LTI 1.3 routes: what an LMS calls, and the admin page that registers LMSs.

- GET|POST /lti/login: OIDC third-party initiated login. Finds the registration (issuer + client id), refuses an
  unknown one or an unknown `lti_deployment_id`, and redirects the browser to the platform's auth URL with a fresh
  state and nonce. The state goes to the browser as a cookie and to Redis (STATE_KEY, STATE_TTL_S) with the nonce
  and the registration; both are needed at the launch.
- POST /lti/launch: the platform's form_post of the id_token. The state record is consumed (single use), then
  pylti1p3 validates the token on lti.threads (lti.tool). A learner's resource-link launch creates or resumes their
  session for that link and goes to its join link; an instructor's signs them in as staff (a proctor account made
  on the first launch) and opens the sessions list filtered to the exam; a deep-linking request shows the picker.
- POST /lti/deep-link: the instructor's pick; answers with a page that form-posts the signed LtiDeepLinkingResponse
  to the platform's return URL.
- GET /.well-known/jwks.json: our public keys.
- GET /admin/lti, POST /admin/lti, POST /admin/lti/remove: admins list, add and remove platforms.

Every refusal is a page with a 4xx status that says what went wrong (lti.tool.REFUSALS), never a 500.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp_jinja2
from aiohttp import web
from pylti1p3.exception import LtiException, OIDCException

from core import tokens
from lti import keys
from lti.threads import off_loop
from lti.tool import (
    DEEP_LINKING_SETTINGS,
    Cookies,
    Launch,
    LaunchRequest,
    Refusal,
    StateSession,
    ToolConf,
    ToolLogin,
    deep_linking_jwt,
    validate_launch,
)
from proctor.accounts import User, audit
from proctor.http import CTX, ascii_only, read_form, unstorable
from proctor.store import lti as store

log = logging.getLogger(__name__)

STATE_KEY = "proctor:lti:state:{state}"
STATE_TTL_S = 300  # pylti1p3's state cookie lives as long
DEEP_LINK_KEY = "proctor:lti:deeplink:{ref}"
DEEP_LINK_TTL_S = 900  # time to pick in the deep-linking page
MAX_PARAM = 4096
MAX_ID_TOKEN = 64 * 1024
MAX_TITLE = 200
DEEP_LINK_KINDS = {"proctored_exam": "Proctored exam"}
_STATE = re.compile(r"state-[0-9a-f-]{36}")
PAGE_CSP = ("default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none'; form-action 'self'; "
            "frame-ancestors {ancestors}")


@dataclass(frozen=True)
class StaffPages:
    """What the web room lends the LTI routes for staff: the logged-in page user (or a redirect to /login), rendering
    a staff page (template, request, context, status), and signing a user in on a response (the staff cookie)."""

    page_user: Callable[[web.Request], User]
    render: Callable[[str, web.Request, dict[str, Any], int], web.Response]
    sign_in: Callable[[web.Request, web.StreamResponse, User], None]


STAFF = web.AppKey("lti_staff_pages", StaffPages)


# --- URLs the LMS is given ------------------------------------------------------------------------------------------
def tool_urls(base_url: str) -> dict[str, str]:
    """The values an LMS asks for when the tool is registered (shown on the admin page and in the README)."""
    return {"login_url": f"{base_url}/lti/login", "launch_url": f"{base_url}/lti/launch",
            "deep_linking_url": f"{base_url}/lti/launch", "jwks_url": f"{base_url}/.well-known/jwks.json",
            "domain": urlsplit(base_url).netloc}


def _origin(url: str) -> str | None:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme in ("http", "https") and parts.netloc else None


def _ancestors(platform: store.Platform | None) -> str:
    """Who may frame our LTI pages: the platform (LMSs open deep-linking pickers in a frame), nobody else."""
    if platform is None:
        return "'none'"
    origins = {o for o in (_origin(platform.issuer), _origin(platform.auth_login_url)) if o}
    return " ".join(sorted(origins)) or "'none'"


# --- cookies ----------------------------------------------------------------------------------------------------------
def _loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def cross_site_cookie(request: web.Request) -> tuple[bool, str]:
    """(Secure, SameSite) for the state cookie. The launch is a form POST from the LMS's site: only a SameSite=None
    cookie comes with it, and browsers keep SameSite=None only when Secure. That needs https (PUBLIC_BASE_URL, or a
    trusted proxy's X-Forwarded-Proto) -- or loopback, which browsers treat as a secure context even over http (the
    tests; `proctor up` on a laptop). On plain http elsewhere a Secure cookie would be dropped, so the cookie is
    SameSite=Lax: launches work only from an LMS on the same site, and the README says to use https."""
    settings = request.app[CTX].settings
    if settings.base_url.startswith("https://") or request.scheme == "https":
        return True, "None"
    if _loopback(urlsplit(settings.base_url).hostname) and _loopback(request.url.host):
        return True, "None"
    return False, "Lax"


def _secure_request(request: web.Request) -> bool:
    return request.app[CTX].settings.base_url.startswith("https://") or request.scheme == "https"


# --- pages ------------------------------------------------------------------------------------------------------------
def _page(template: str, request: web.Request, context: dict[str, Any], status: int = 200,
          ancestors: str = "'none'", csp: str | None = None) -> web.Response:
    response = aiohttp_jinja2.render_template(template, request, context)
    response.set_status(status)
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Content-Security-Policy"] = csp or PAGE_CSP.format(ancestors=ancestors)
    return response


def _redirect(location: str, status: int = 303) -> web.Response:
    return web.Response(status=status, headers={"Location": location, "Cache-Control": "no-store"})


def refused(request: web.Request, refusal: Refusal) -> web.Response:
    log.info("LTI %s refused (%s): %s", request.path, refusal.code, refusal.detail)
    return _page("lti_error.html", request, {"code": refusal.code, "message": refusal.message,
                                              "detail": refusal.detail[:300]}, refusal.status)


async def _params(request: web.Request) -> dict[str, str]:
    """The query (GET) or form (POST) fields as text; Refusal("format") for fields no LMS sends."""
    raw = request.query if request.method == "GET" else await read_form(request)
    params: dict[str, str] = {}
    for name, value in raw.items():
        if not isinstance(value, str):
            raise Refusal("format", f"field {name!r} is not text")
        limit = MAX_ID_TOKEN if name == "id_token" else MAX_PARAM
        if len(value) > limit or unstorable(value) is not None:
            raise Refusal("format", f"field {name!r} is too long or holds characters that cannot be used")
        params[name] = value
    return params


# --- OIDC login ---------------------------------------------------------------------------------------------------
async def login(request: web.Request) -> web.StreamResponse:
    try:
        return await _login(request)
    except Refusal as refusal:
        return refused(request, refusal)


async def _login(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CTX]
    params = await _params(request)
    iss, hint = params.get("iss", ""), params.get("login_hint", "")
    if not iss or not hint:
        raise Refusal("format", "the login request needs iss and login_hint")
    async with ctx.pool.acquire() as conn:
        platforms = await store.platforms_for_issuer(conn, iss)
    conf = ToolConf(platforms)
    platform = conf.platform(iss, params.get("client_id"))
    if platform is None:
        raise Refusal("unknown_client" if conf.has_issuer(iss) else "unknown_issuer",
                      f"issuer {iss[:200]!r}, client id {params.get('client_id', '')[:200]!r}")
    deployment = params.get("lti_deployment_id")
    if deployment is not None and deployment not in platform.deployment_ids:
        raise Refusal("deployment", f"deployment {deployment[:200]!r} of {platform.name!r}")
    lti_request = LaunchRequest(params, {}, _secure_request(request))
    session, cookies = StateSession(), Cookies(lti_request)
    oidc = ToolLogin(lti_request, conf, session, cookies)
    try:
        location = oidc.get_redirect_object(tool_urls(ctx.settings.base_url)["launch_url"]).get_redirect_url()
    except (OIDCException, LtiException) as exc:
        raise Refusal("format", str(exc)) from None
    [(cookie_name, (state, _))] = cookies.to_set.items()
    assert session.nonce is not None
    record = {"iss": platform.issuer, "client_id": platform.client_id, "platform_id": platform.id,
              "nonce": session.nonce}
    await ctx.redis.set(STATE_KEY.format(state=state), json.dumps(record), ex=STATE_TTL_S)
    response = _redirect(location, 302)
    secure, samesite = cross_site_cookie(request)
    response.set_cookie(cookie_name, state, max_age=STATE_TTL_S, httponly=True, secure=secure, samesite=samesite,
                        path="/lti/")
    response.headers["Cache-Control"] = "no-store"
    return response


# --- launch -------------------------------------------------------------------------------------------------------
async def launch(request: web.Request) -> web.StreamResponse:
    try:
        response = await _launch(request)
    except Refusal as refusal:
        return refused(request, refusal)
    # The state cookie has served its one launch: the browser may forget it now (same attributes, or it keeps it).
    name = f"lti1p3-{(await read_form(request)).get('state', '')}"  # the form was read (and checked) already
    if name in request.cookies:
        secure, samesite = cross_site_cookie(request)
        response.del_cookie(name, path="/lti/", secure=secure, httponly=True, samesite=samesite)
    return response


async def _launch(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CTX]
    params = await _params(request)
    if "error" in params and "id_token" not in params:  # the platform's OIDC error response
        raise Refusal("format", f"the LMS answered the login with {params['error'][:100]!r}: "
                                f"{params.get('error_description', '')[:200]}")
    state = params.get("state", "")
    if not params.get("id_token"):
        raise Refusal("format", "no id_token in the launch")
    if not _STATE.fullmatch(state):
        raise Refusal("state", "no state, or not one this server issues")
    cookie = ascii_only(request.cookies.get(f"lti1p3-{state}"))
    # Consumed whether the launch succeeds or not: a state, and the nonce it holds, serve one launch at most.
    raw = await ctx.redis.getdel(STATE_KEY.format(state=state))
    if raw is None:
        raise Refusal("state", "unknown, expired or already used state")
    record = json.loads(raw)
    async with ctx.pool.acquire() as conn:
        platforms = await store.platforms_for_issuer(conn, record["iss"])
    conf = ToolConf(platforms)
    lti_request = LaunchRequest(params, {f"lti1p3-{state}": cookie} if cookie else {}, _secure_request(request))
    result = await off_loop(lambda: validate_launch(lti_request, conf, record["nonce"]))
    if result.platform.id != record["platform_id"]:
        raise Refusal("audience", "the token's client id is not the one the login was for")
    if result.message_type == "LtiDeepLinkingRequest":
        if not result.is_instructor:
            raise Refusal("role", "deep linking needs an instructor or administrator role")
        return await _deep_link_page(request, result)
    if result.is_instructor:
        return await _instructor(request, result)
    if result.is_learner:
        return await _student(request, result)
    raise Refusal("role", f"roles {result.claim('roles')!r}"[:300])


def _clean(value: Any, limit: int = MAX_TITLE) -> str:
    """A name or title from the LMS as one line of storable text (it is shown escaped everywhere)."""
    if not isinstance(value, str):
        return ""
    text = " ".join("".join(c if c.isprintable() else " " for c in value).split())
    return text[:limit] if unstorable(text) is None else ""


def _person(body: dict[str, Any]) -> str:
    name = _clean(body.get("name")) or _clean(f"{body.get('given_name') or ''} {body.get('family_name') or ''}")
    return name or _clean(body.get("email")) or f"LMS user {_clean(body.get('sub'), 40)}"


def _exam(result: Launch) -> str:
    link = result.claim("resource_link") or {}
    context = result.claim("context") or {}
    title = _clean(link.get("title")) if isinstance(link, dict) else ""
    course = _clean(context.get("title")) if isinstance(context, dict) else ""
    return title or course or "LMS exam"


def _sub(result: Launch) -> str:
    sub = result.body.get("sub")
    if not isinstance(sub, str) or not sub or len(sub) > 255 or unstorable(sub):
        raise Refusal("message", "sub must be a string of 1-255 characters")
    return sub


async def _student(request: web.Request, result: Launch) -> web.StreamResponse:
    ctx = request.app[CTX]
    link = result.claim("resource_link") or {}
    link_id = link.get("id") if isinstance(link, dict) else None
    if not isinstance(link_id, str) or not link_id or len(link_id) > 255 or unstorable(link_id):
        raise Refusal("message", "resource_link.id must be a string of 1-255 characters")
    context = result.claim("context") or {}
    async with ctx.pool.acquire() as conn:
        made = await store.session_for_launch(
            conn, platform=result.platform, deployment_id=result.deployment_id, resource_link_id=link_id,
            sub=_sub(result), candidate=_person(result.body), exam=_exam(result),
            context_title=(_clean(context.get("title")) or None) if isinstance(context, dict) else None,
            ttl_s=ctx.settings.join_token_ttl_s)
    log.info("LTI learner launch: %s session %s", "resumed" if made.resumed else "new", made.row["id"])
    token = tokens.for_session(ctx.settings.signing_key(), made.row)
    response = _redirect(f"/join/{token}")
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


async def _instructor(request: web.Request, result: Launch) -> web.StreamResponse:
    ctx = request.app[CTX]
    async with ctx.pool.acquire() as conn:
        user, created = await store.staff_for_launch(conn, platform=result.platform, sub=_sub(result),
                                                     display_name=_person(result.body))
        if user is None:
            raise Refusal("disabled", f"account {result.platform.id}:{_sub(result)[:64]}")
        await audit(conn, user.name, "login", f"user:{user.name}",
                    {"ip": request.remote or "unknown", "via": "lti", "platform": result.platform.id,
                     "new_account": created})
    link = result.claim("resource_link") or {}
    title = _clean(link.get("title")) if isinstance(link, dict) else ""
    response = _redirect("/?" + urlencode({"q": title}) if title else "/")
    request.app[STAFF].sign_in(request, response, user)
    return response


# --- deep linking ---------------------------------------------------------------------------------------------------
async def _deep_link_page(request: web.Request, result: Launch) -> web.StreamResponse:
    ctx = request.app[CTX]
    settings = result.body.get(DEEP_LINKING_SETTINGS)
    if not isinstance(settings, dict) or not isinstance(settings.get("deep_link_return_url"), str):
        raise Refusal("message", "deep_linking_settings.deep_link_return_url is missing")
    return_url = settings["deep_link_return_url"]
    if _origin(return_url) is None or len(return_url) > MAX_PARAM:
        raise Refusal("message", "deep_link_return_url must be an absolute http(s) URL")
    ref = secrets.token_urlsafe(24)
    record = {"platform_id": result.platform.id, "deployment_id": result.deployment_id, "settings": settings,
              "sub": _sub(result)}
    await ctx.redis.set(DEEP_LINK_KEY.format(ref=ref), json.dumps(record), ex=DEEP_LINK_TTL_S)
    context = result.claim("context") or {}
    course = _clean(context.get("title")) if isinstance(context, dict) else ""
    title = _clean(settings.get("title")) or (f"Proctored exam — {course}" if course else "Proctored exam")
    return _page("lti_deep_link.html", request, {
        "ref": ref, "title": title[:MAX_TITLE], "kinds": DEEP_LINK_KINDS, "platform": result.platform.name,
        "course": course, "multiple": settings.get("accept_multiple")}, ancestors=_ancestors(result.platform))


async def deep_link(request: web.Request) -> web.StreamResponse:
    try:
        return await _deep_link(request)
    except Refusal as refusal:
        return refused(request, refusal)


async def _deep_link(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CTX]
    params = await _params(request)
    ref = ascii_only(params.get("ref"))
    raw = await ctx.redis.getdel(DEEP_LINK_KEY.format(ref=ref)) if ref and len(ref) <= 64 else None
    if raw is None:
        raise Refusal("state", "this selection expired or was already sent; start again from the LMS")
    record = json.loads(raw)
    kind = params.get("kind", "")
    if kind not in DEEP_LINK_KINDS:
        raise Refusal("message", f"kind must be one of {', '.join(DEEP_LINK_KINDS)}")
    title = _clean(params.get("title")) or DEEP_LINK_KINDS[kind]
    async with ctx.pool.acquire() as conn:
        platform = await store.get_platform(conn, int(record["platform_id"]))
    if platform is None:
        raise Refusal("unknown_issuer", "the platform was unregistered meanwhile")
    key = await keys.signing_key(ctx.pool)
    urls = tool_urls(ctx.settings.base_url)

    def sign() -> str:
        conf = ToolConf([platform], key, keys.public_pem(key))
        return deep_linking_jwt(conf, platform, record["deployment_id"], record["settings"], title=title,
                                url=urls["launch_url"], custom={"proctoring": kind})

    token = await off_loop(sign)
    async with ctx.pool.acquire() as conn:
        await audit(conn, f"lti:{platform.id}:{str(record['sub'])[:64]}", "lti.deep_link",
                    f"lti_platform:{platform.id}",
                    {"title": title, "kind": kind, "deployment": record["deployment_id"]})
    return_url = record["settings"]["deep_link_return_url"]
    nonce = secrets.token_urlsafe(16)
    csp = (f"default-src 'none'; style-src 'self'; script-src 'nonce-{nonce}'; base-uri 'none'; "
           f"form-action {_origin(return_url)}; frame-ancestors {_ancestors(platform)}")
    return _page("lti_deep_link_return.html", request, {
        "return_url": return_url, "jwt": token, "nonce": nonce, "title": title, "platform": platform.name}, csp=csp)


# --- our keys -------------------------------------------------------------------------------------------------------
async def jwks(request: web.Request) -> web.Response:
    body = await keys.jwks(request.app[CTX].pool)
    return web.json_response(body, headers={"Cache-Control": "public, max-age=300"})


# --- admin page -----------------------------------------------------------------------------------------------------
DONE = {"added": "Platform registered: its launches are accepted from now on.",
        "removed": "Platform removed: its launches are refused from now on (sessions already made stay)."}
FIELDS = ("name", "issuer", "client_id", "auth_login_url", "auth_token_url", "key_set_url", "deployment_ids")


def _admin(request: web.Request) -> User:
    user = request.app[STAFF].page_user(request)
    if not user.is_admin:
        raise web.HTTPForbidden(text="admin role required")
    return user


async def _admin_page(request: web.Request, *, error: str | None = None, form: dict[str, str] | None = None,
                      status: int = 200) -> web.Response:
    async with request.app[CTX].pool.acquire() as conn:
        platforms = await store.list_platforms(conn)
    return request.app[STAFF].render("admin_lti.html", request, {
        "nav": "lti", "platforms": platforms, "tool": tool_urls(request.app[CTX].settings.base_url),
        "error": error, "form": form or {}, "done": DONE.get(request.query.get("done", ""))}, status)


async def admin_page(request: web.Request) -> web.Response:
    _admin(request)
    return await _admin_page(request)


async def admin_add(request: web.Request) -> web.Response:
    admin = _admin(request)
    form = await read_form(request)
    fields = {name: str(form.get(name, ""))[:MAX_PARAM] for name in FIELDS}
    try:
        async with request.app[CTX].pool.acquire() as conn:
            await store.add_platform(conn, actor=admin.name, name=fields["name"], issuer=fields["issuer"],
                                     client_id=fields["client_id"], auth_login_url=fields["auth_login_url"],
                                     auth_token_url=fields["auth_token_url"], key_set_url=fields["key_set_url"],
                                     deployment_ids=re.split(r"[\s,]+", fields["deployment_ids"]))
    except store.LtiConfigError as exc:
        return await _admin_page(request, error=str(exc), form=fields, status=400)
    raise web.HTTPSeeOther("/admin/lti?done=added")


async def admin_remove(request: web.Request) -> web.Response:
    admin = _admin(request)
    form = await read_form(request)
    raw = str(form.get("platform_id", ""))
    platform_id = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 18 else 0
    async with request.app[CTX].pool.acquire() as conn:
        if not await store.remove_platform(conn, platform_id, actor=admin.name):
            raise web.HTTPNotFound(text="no such platform")
    raise web.HTTPSeeOther("/admin/lti?done=removed")


def setup_routes(app: web.Application, staff: StaffPages) -> None:
    app[STAFF] = staff
    r = app.router
    r.add_get("/lti/login", login)
    r.add_post("/lti/login", login)
    r.add_post("/lti/launch", launch)
    r.add_post("/lti/deep-link", deep_link)
    r.add_get("/.well-known/jwks.json", jwks)
    r.add_get("/admin/lti", admin_page)
    r.add_post("/admin/lti", admin_add)
    r.add_post("/admin/lti/remove", admin_remove)
