"""Bad input never gets a 500: random bodies, ids, tokens, queries and methods against every API route of the app,
and raw bytes (what aiohttp's own client refuses to send) in credentials, cookies and the login form.

The generators cover the classes of input issue 19 found answering 500: bytes that are not ASCII in the bearer
token, the session cookie, the CSRF header and the login form; NUL and unpaired surrogates in text that reaches
Postgres (names, the search query); integers beyond the int4/int8 columns in ids; deeply nested JSON; images over
the pixel limit and odd multipart bodies. A 503 (retry later: no media node, photo decoding busy) is an answer,
not a crash.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import AsyncIterator
from functools import lru_cache
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from proctor.context import Context
from proctor.settings import Settings
from tests.support.accounts import login_token
from tests.support.rawhttp import raw_request
from tests.support.servers import RunningApp
from tests.support.sessions import create_session
from web import cookies

ID_CHARS = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60)
# Ids that are numbers, most of them beyond what an int4 or int8 column holds.
HUGE_INTS = st.one_of(st.integers(min_value=-(2**80), max_value=2**80),
                      st.sampled_from([2**31, 2**31 - 1, -(2**31) - 1, 2**63, 2**63 - 1, -(2**63) - 1, 10**20]))
IDS = st.one_of(ID_CHARS, HUGE_INTS.map(str))
# Text as JSON can carry it: NUL and unpaired surrogates included (Postgres stores neither).
NASTY = st.text(alphabet=st.one_of(st.characters(), st.characters(categories=["Cs"]), st.just("\x00")), max_size=40)
DEEP = st.builds(lambda n, kind: (b"[" * n + b"]" * n) if kind else (b'{"a":' * n + b"1" + b"}" * n),
                 st.integers(min_value=100, max_value=2800), st.booleans())


def _dumps(value: Any) -> bytes:
    return json.dumps(value).encode()  # ensure_ascii: surrogates go out as \\udXXX escapes, NUL as \\u0000


BODIES = st.one_of(
    st.binary(max_size=2000),
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | NASTY,
                 lambda inner: st.lists(inner, max_size=5) | st.dictionaries(NASTY, inner, max_size=5),
                 max_leaves=20).map(_dumps),
    st.fixed_dictionaries({"sdp": NASTY.map(lambda s: "v=0\r\nm=video " + s), "type": st.just("offer")}).map(_dumps),
    st.fixed_dictionaries({"candidate": NASTY, "exam": NASTY}).map(_dumps),
    st.fixed_dictionaries({"state": st.sampled_from(["confirmed", "dismissed", "x"]), "note": NASTY}).map(_dumps),
    DEEP,
)


@lru_cache(maxsize=1)
def _photos() -> list[bytes]:
    def png(image: Image.Image) -> bytes:
        out = io.BytesIO()
        image.save(out, format="PNG")
        return out.getvalue()

    return [b"not an image", png(Image.new("RGB", (64, 48), 128)), png(Image.new("L", (4097, 4096), 0)),
            png(Image.new("P", (32, 32))), b"\x89PNG\r\n\x1a\n" + b"\0" * 64]


def _multipart(name: bytes, photo: int, extra: bytes, nested: bool) -> bytes:
    data = _photos()[photo]
    part = b'--x\r\nContent-Disposition: form-data; name="' + name + b'"; filename="p"\r\n'
    if nested:
        part += b"Content-Type: multipart/mixed; boundary=y\r\n\r\n--y\r\n\r\n" + data + b"\r\n--y--\r\n"
    else:
        part += b"\r\n" + data + b"\r\n"
    return part + extra + b"--x--\r\n"


MULTIPART = st.builds(_multipart, st.sampled_from([b"photo", b"junk", b"", b"ph\xffoto"]),
                      st.integers(min_value=0, max_value=4), st.binary(max_size=40), st.booleans())
# Query strings: the search text (NUL, surrogates), filters and limits.
QUERIES = st.dictionaries(st.sampled_from(["q", "status", "limit", "next"]), NASTY | HUGE_INTS.map(str), max_size=3)


def _query(values: dict[str, str]) -> str:
    if not values:
        return ""
    return "?" + "&".join(f"{k}={quote(v.encode('utf-8', 'surrogatepass'), safe='')}" for k, v in values.items())


def _routes(prefix: str = "/api/") -> list[tuple[str, str]]:
    from web.app import create_app

    app = create_app(Settings.from_env({}, env_file=None))
    routes = []
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        if path and path.startswith(prefix) and route.method != "HEAD" and not path.startswith("/static"):
            routes.append((route.method, path))
    return sorted(set(routes))


ROUTES = _routes()
ALL_ROUTES = _routes("/")


def _fill(path: str, sid: str | None, ident: str) -> str:
    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name == "session_id" and sid is not None:
            return sid
        if name == "fmt":
            return "json"
        return quote(ident.encode("utf-8", "surrogatepass"), safe="") or "x"

    return re.sub(r"\{(\w+)(?::[^}]*)?\}", one, path)


async def _fresh_session(base: str, admin_token: str) -> tuple[str, str]:
    created = await create_session(base, admin_token, candidate="Fuzz Felix", exam="Fuzz 1")
    return created["id"], created["join_url"].rsplit("/", 1)[1]


def _crashed(status: int) -> bool:
    return status >= 500 and status != 503


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(route=st.sampled_from(ROUTES), ident=IDS, body=st.one_of(BODIES, MULTIPART),
       real_session=st.booleans(), query=QUERIES,
       token=st.sampled_from(["admin", "join", "junk", "none", "valid_join", "cookie"]),
       content_type=st.sampled_from(["application/json", "multipart/form-data; boundary=x", "text/plain",
                                     "multipart/form-data", "application/x-www-form-urlencoded; charset=nope"]))
async def test_api_never_answers_500(web_server: RunningApp, admin_token: str, staff_cookie: tuple[str, str],
                                     route: tuple[str, str], ident: str, body: bytes, real_session: bool,
                                     query: dict[str, str], token: str, content_type: str) -> None:
    method, path = route
    if method == "GET" and path == "/api/live":
        return  # the WebSocket route is covered by its own tests
    sid, join = await _fresh_session(web_server.url, admin_token) if real_session or token == "valid_join" \
        else (None, "")
    url_path = _fill(path, sid, ident) + (_query(query) if method == "GET" else "")
    headers: list[tuple[str, str | bytes]] = [("Content-Type", content_type)]
    if token == "admin":
        headers.append(("Authorization", f"Bearer {admin_token}"))
    elif token == "join":
        headers.append(("Authorization", "Bearer eyJzIjoiMSJ9.c2ln"))
    elif token == "valid_join":
        headers.append(("Authorization", f"Bearer {join}"))
    elif token == "junk":
        headers.append(("Authorization", b"Bearer pt_" + ident[:20].encode("utf-8", "surrogatepass")))
    elif token == "cookie":
        headers += [("Cookie", f"{cookies.COOKIE}={staff_cookie[0]}"), ("X-CSRF-Token", staff_cookie[1])]
    response = await raw_request(web_server.url, method, url_path, headers, body)
    assert not _crashed(response.status), (method, url_path, token, body[:200], response.status,
                                           response.text()[:300])


# --- targeted: each class of input against the routes it reaches, with credentials that get it there ---------

JSON_ROUTES = [("POST", "/api/sessions"), ("POST", "/api/sessions/{session_id}/events/{event_id}/review"),
               ("POST", "/api/sessions/{session_id}/offer"), ("POST", "/api/sessions/{session_id}/consent")]
ID_ROUTES = [(m, p) for m, p in ROUTES if re.search(r"\{(event_id|idx)\}", p)]
QUERY_ROUTES = [(m, p) for m, p in ROUTES if m == "GET" and p != "/api/live"]
PHOTO_ROUTES = ["precheck", "reference"]


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(route=st.sampled_from(JSON_ROUTES), body=BODIES, ident=IDS)
async def test_json_bodies_never_answer_500(web_server: RunningApp, admin_token: str, route: tuple[str, str],
                                            body: bytes, ident: str) -> None:
    method, path = route
    sid, join = await _fresh_session(web_server.url, admin_token)
    credential = join if path.endswith(("/offer", "/consent")) else admin_token
    response = await raw_request(web_server.url, method, _fill(path, sid, ident), [
        ("Authorization", f"Bearer {credential}"), ("Content-Type", "application/json")], body)
    assert not _crashed(response.status), (path, body[:200], response.status, response.text()[:300])


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(route=st.sampled_from(ID_ROUTES + QUERY_ROUTES), ident=IDS, query=QUERIES)
async def test_ids_and_queries_never_answer_500(web_server: RunningApp, admin_token: str, route: tuple[str, str],
                                                ident: str, query: dict[str, str]) -> None:
    method, path = route
    sid, _ = await _fresh_session(web_server.url, admin_token)
    body = b'{"state": "confirmed"}' if method == "POST" else b""
    response = await raw_request(web_server.url, method, _fill(path, sid, ident) + _query(query), [
        ("Authorization", f"Bearer {admin_token}"), ("Content-Type", "application/json")], body)
    assert not _crashed(response.status), (method, path, ident[:60], query, response.status, response.text()[:300])


@pytest.mark.slow
@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(route=st.sampled_from(PHOTO_ROUTES), body=st.one_of(MULTIPART, st.binary(max_size=300)),
       content_type=st.sampled_from([b"multipart/form-data; boundary=x", b"multipart/form-data",
                                     b"multipart/form-data; boundary=\xff", b"multipart/mixed; boundary=x"]))
async def test_photo_uploads_never_answer_500(web_server: RunningApp, admin_token: str, route: str, body: bytes,
                                              content_type: bytes) -> None:
    sid, join = await _fresh_session(web_server.url, admin_token)
    response = await raw_request(web_server.url, "POST", f"/api/sessions/{sid}/{route}", [
        ("Authorization", f"Bearer {join}"), ("Content-Type", content_type)], body)
    assert not _crashed(response.status), (route, content_type, body[:200], response.status, response.text()[:300])


# --- raw bytes in credentials -------------------------------------------------------------------------------

RAW = st.binary(min_size=1, max_size=40).filter(lambda b: b"\r" not in b and b"\n" not in b)
# Five dot-separated fields is the shape of a session cookie: only those reach the signature check.
DOTTED = st.lists(RAW | st.text(max_size=12).map(str.encode), min_size=1, max_size=6).map(b".".join)
CREDENTIALS = st.one_of(
    st.tuples(st.just("Authorization"), st.one_of(RAW.map(lambda b: b"Bearer pt_" + b), DOTTED.map(
        lambda b: b"Bearer " + b), RAW)),
    st.tuples(st.just("Cookie"), DOTTED.map(lambda b: b"proctor_session=" + b)),
    st.tuples(st.just("Cookie"), RAW.map(lambda b: b"proctor_login=" + b)),
    st.tuples(st.just("X-CSRF-Token"), RAW),
)


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(route=st.sampled_from(ALL_ROUTES), credential=CREDENTIALS, ident=DOTTED)
async def test_raw_credentials_never_answer_500(web_server: RunningApp, admin_token: str,
                                                staff_cookie: tuple[str, str], route: tuple[str, str],
                                                credential: tuple[str, bytes], ident: bytes) -> None:
    method, path = route
    if method == "GET" and path == "/api/live":
        return
    sid, _ = await _fresh_session(web_server.url, admin_token)
    url_path = _fill(path, sid, ident.decode("utf-8", "surrogateescape"))
    name, value = credential
    headers: list[tuple[str, str | bytes]] = [(name, value), ("Content-Type", "application/json")]
    if name == "X-CSRF-Token":  # a well-signed login cookie, so that the CSRF check is reached
        headers.append(("Cookie", f"{cookies.COOKIE}={staff_cookie[0]}"))
    body = b'{"candidate": "a", "exam": "b", "state": "confirmed"}' if method == "POST" else b""
    response = await raw_request(web_server.url, method, url_path, headers, body)
    assert not _crashed(response.status), (method, url_path, credential, response.status, response.text()[:300])


# --- the login form -----------------------------------------------------------------------------------------

CHARSETS = st.sampled_from(["", "; charset=utf-8", "; charset=nope", "; charset=unicode_escape",
                            "; charset=raw_unicode_escape", "; charset=utf-16", "; charset=latin-1"])


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:invalid escape sequence:DeprecationWarning")  # aiohttp decoding unicode_escape
@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(name=NASTY, password=NASTY, csrf=st.one_of(st.none(), NASTY), charset=CHARSETS, raw=st.booleans(),
       junk=RAW)
async def test_login_form_never_answers_500(web_server: RunningApp, login_form: tuple[str, str], name: str,
                                            password: str, csrf: str | None, charset: str, raw: bool,
                                            junk: bytes) -> None:
    token, nonce = login_form
    if raw:  # bytes as an escaping charset reads them (unicode_escape: "\\x00", "\\ud800")
        body = b"name=" + junk + b"&password=x&csrf_token=" + token.encode()
    else:
        fields = {"name": name, "password": password, "csrf_token": token if csrf is None else csrf}
        body = "&".join(f"{k}={quote(v.encode('utf-8', 'surrogatepass'), safe='')}" for k, v in fields.items()
                        ).encode()
    response = await raw_request(web_server.url, "POST", "/login", [
        ("Cookie", f"{cookies.LOGIN_COOKIE}={nonce}"),
        ("Content-Type", "application/x-www-form-urlencoded" + charset)], body)
    assert not _crashed(response.status), (body[:200], charset, response.status, response.text()[:300])


@pytest.fixture(scope="module")
async def login_form(web_server: RunningApp, ctx: Context) -> AsyncIterator[tuple[str, str]]:
    """The login form's CSRF token and nonce cookie. Afterwards the failed-login counters are reset: hundreds of
    wrong logins from 127.0.0.1 would otherwise throttle every later test's login."""
    response = await raw_request(web_server.url, "GET", "/login")
    nonce = re.search(r"proctor_login=([^;]+)", response.headers["set-cookie"]).group(1)  # type: ignore[union-attr]
    try:
        yield login_token(response.text()), nonce
    finally:
        async for key in ctx.redis.scan_iter(match="proctor:web:login*"):
            await ctx.redis.delete(key)


@pytest.fixture(scope="module")
async def staff_cookie(settings: Settings, staff_user: dict[str, Any]) -> tuple[str, str]:
    """A well-signed login cookie of an admin and its CSRF token."""
    value, claims = cookies.issue(settings.signing_key(), staff_user["id"])
    return value, cookies.csrf_token(settings.signing_key(), claims.sid)
