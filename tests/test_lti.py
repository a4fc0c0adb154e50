"""LTI 1.3 against an emulated platform (tests/support/lti_platform.py: its own keys, JWKS over loopback, real RS256
id_tokens): OIDC login, learner launch (new and resumed session, straight to the join link), instructor launch
(staff sign-in, sessions list filtered to the exam), deep linking (a response signed with our key, verified with our
JWKS), every refusal (a 4xx page that says why, never a 500), our JWKS, the admin page and the CLI."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import jwt
import pytest
from multidict import CIMultiDict

from core import tokens
from lti.tool import forget_jwks
from proctor.context import Context
from proctor.store import lti as store
from proctor.store import sessions
from tests.support.accounts import logged_in, make_user, page_csrf
from tests.support.lti_platform import (
    INSTRUCTOR,
    MENTOR,
    SYSTEM_ADMIN,
    LaunchSpec,
    LtiPlatform,
    form_action,
    hidden_fields,
)
from tests.support.net import free_port
from tests.support.servers import RunningApp

ROOT = Path(__file__).resolve().parents[1]
CLAIM = "https://purl.imsglobal.org/spec/lti/claim/"


@pytest.fixture(scope="module")
async def lms(web_server: RunningApp, ctx: Context) -> Any:
    async with LtiPlatform() as platform:
        platform.tool_base = web_server.url
        async with ctx.pool.acquire() as conn:
            await store.add_platform(conn, actor="test", **platform.registration())
        yield platform


def _http() -> aiohttp.ClientSession:
    # Cookies by hand: each test decides which cookie the "browser" sends back.
    return aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())


@dataclass
class Login:
    location: str
    cookie_name: str
    cookie_value: str
    set_cookie: str

    @property
    def cookie(self) -> str:
        return f"{self.cookie_name}={self.cookie_value}"


async def start_login(http: aiohttp.ClientSession, base: str, params: dict[str, str], method: str = "GET") -> Login:
    if method == "GET":
        request = http.get(f"{base}/lti/login", params=params, allow_redirects=False)
    else:
        request = http.post(f"{base}/lti/login", data=params, allow_redirects=False)
    async with request as response:
        assert response.status == 302, (response.status, await response.text())
        header = next(h for h in response.headers.getall("Set-Cookie") if h.startswith("lti1p3-state-"))
        morsel = next(iter(SimpleCookie(header).values()))
        return Login(response.headers["Location"], morsel.key, morsel.value, header)


async def platform_auth(http: aiohttp.ClientSession, login: Login) -> tuple[str, dict[str, str]]:
    """The browser follows the redirect to the platform, which answers with its auto-submitting form_post."""
    async with http.get(login.location) as response:
        page = await response.text()
        assert response.status == 200, page
    return form_action(page), hidden_fields(page)


async def post_launch(http: aiohttp.ClientSession, action: str, fields: dict[str, str],
                      cookie: str | None) -> tuple[int, CIMultiDict[str], str]:
    headers = {"Cookie": cookie} if cookie else {}
    async with http.post(action, data=fields, headers=headers, allow_redirects=False) as response:
        return response.status, response.headers.copy(), await response.text()


async def launch(base: str, lms: LtiPlatform, spec: LaunchSpec, **login_kw: Any) -> tuple[int, CIMultiDict[str], str]:
    """The whole flow for one launch: login, auth, form_post with the state cookie."""
    async with _http() as http:
        hint = lms.prepare(spec)
        login = await start_login(http, base, lms.login_params(hint, **login_kw))
        action, fields = await platform_auth(http, login)
        return await post_launch(http, action, fields, login.cookie)


def _refusal(status: int, body: str, code: str, expected_status: int) -> None:
    assert status == expected_status, (status, body)
    match = re.search(r'id="lti-error" data-code="([a-z_]+)"', body)
    assert match and match.group(1) == code, body


async def _lti_sessions(ctx: Context, sub: str) -> list[dict[str, Any]]:
    async with ctx.pool.acquire() as conn:
        rows = await conn.fetch("SELECT l.*, s.candidate, s.exam, s.status FROM lti_sessions l "
                                "JOIN sessions s ON s.id = l.session_id WHERE l.sub = $1 ORDER BY l.created_at", sub)
    return [dict(r) for r in rows]


# --- our keys ---------------------------------------------------------------------------------------------------
async def test_jwks_serves_the_public_key_only(web_server: RunningApp, ctx: Context) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{web_server.url}/.well-known/jwks.json") as response:
            assert response.status == 200
            first = await response.json()
        async with http.get(f"{web_server.url}/.well-known/jwks.json") as response:
            second = await response.json()
    assert first == second and len(first["keys"]) >= 1  # made once, the same every time
    key = first["keys"][-1]
    assert key["kty"] == "RSA" and key["alg"] == "RS256" and key["use"] == "sig" and key["kid"]
    assert not {"d", "p", "q", "dp", "dq", "qi"} & set(key)  # nothing private
    async with ctx.pool.acquire() as conn:
        stored = await store.signing_key(conn)
    assert stored is not None and stored.kid in {k["kid"] for k in first["keys"]}
    assert "PRIVATE KEY" in stored.private_pem


# --- login ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_login_redirects_to_the_platform_with_state_and_nonce(web_server: RunningApp, ctx: Context,
                                                                    lms: LtiPlatform, method: str) -> None:
    hint = lms.prepare(LaunchSpec())
    async with _http() as http:
        login = await start_login(http, web_server.url, lms.login_params(hint), method)
    url = urlsplit(login.location)
    assert f"{url.scheme}://{url.netloc}{url.path}" == lms.auth_login_url
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert query["scope"] == "openid" and query["response_type"] == "id_token"
    assert query["response_mode"] == "form_post" and query["prompt"] == "none"
    assert query["client_id"] == lms.client_id and query["login_hint"] == hint and query["lti_message_hint"] == hint
    assert query["redirect_uri"] == f"{web_server.url}/lti/launch"
    assert query["state"] == login.cookie_value and login.cookie_name == f"lti1p3-{query['state']}"
    assert len(query["nonce"]) >= 32
    # The state cookie: only for /lti/, short-lived, HttpOnly, and SameSite=None; Secure so that the platform's
    # cross-site form POST carries it (loopback is a secure context for browsers even over http).
    morsel = SimpleCookie(login.set_cookie)[login.cookie_name]
    assert morsel["httponly"] is True and morsel["secure"] is True and morsel["samesite"] == "None"
    assert morsel["path"] == "/lti/" and int(morsel["max-age"]) == 300
    # ...and the server-side record, with a TTL, holding the nonce.
    assert 0 < await ctx.redis.ttl(f"proctor:lti:state:{query['state']}") <= 300
    assert query["nonce"] in (await ctx.redis.get(f"proctor:lti:state:{query['state']}") or "")


# --- learner --------------------------------------------------------------------------------------------------------
async def test_learner_launch_creates_the_session_then_resumes_it(web_server: RunningApp, ctx: Context,
                                                                   lms: LtiPlatform) -> None:
    base = web_server.url
    spec = LaunchSpec(name="Grace <b>Hopper</b>", resource_link={"id": f"rl-{uuid.uuid4().hex[:6]}",
                                                                "title": "Final exam"})
    status, headers, body = await launch(base, lms, spec)
    assert status == 303, body
    location = headers["Location"]
    assert location.startswith("/join/")
    claims = tokens.verify(ctx.settings.signing_key(), location.removeprefix("/join/"))
    [mapped] = await _lti_sessions(ctx, spec.sub)
    assert str(mapped["session_id"]) == claims.session_id
    assert mapped["candidate"] == "Grace <b>Hopper</b>" and mapped["exam"] == "Final exam"
    assert mapped["status"] == "created" and mapped["deployment_id"] == lms.deployment_id
    assert mapped["resource_link_id"] == spec.resource_link["id"] and mapped["context_title"] == "Maths 101"
    async with aiohttp.ClientSession() as http:  # the join page opens, with the LMS name (escaped)
        async with http.get(base + location) as response:
            page = await response.text()
            assert response.status == 200
    assert "Grace &lt;b&gt;Hopper&lt;/b&gt;" in page and "<b>Hopper" not in page

    # The same learner launching the same link again: the same session.
    status, headers, _ = await launch(base, lms, spec)
    assert status == 303
    again = tokens.verify(ctx.settings.signing_key(), headers["Location"].removeprefix("/join/"))
    assert again.session_id == claims.session_id
    assert len(await _lti_sessions(ctx, spec.sub)) == 1
    # Another link for the same learner: another session.
    other = LaunchSpec(sub=spec.sub, resource_link={"id": "rl-other", "title": "Quiz 2"})
    status, headers, _ = await launch(base, lms, other)
    assert status == 303 and len(await _lti_sessions(ctx, spec.sub)) == 2
    # Once the session has ended, a launch is a new attempt (the ended one stays for review).
    async with ctx.pool.acquire() as conn:
        assert await sessions.end(conn, ctx.redis, claims.session_id, "test")
    status, headers, _ = await launch(base, lms, spec)
    third = tokens.verify(ctx.settings.signing_key(), headers["Location"].removeprefix("/join/"))
    assert status == 303 and third.session_id != claims.session_id
    async with ctx.pool.acquire() as conn:
        audits = await conn.fetch("SELECT action FROM audit_log WHERE target = $1 ORDER BY id",
                                  f"session:{claims.session_id}")
    assert [a["action"] for a in audits][:2] == ["session.create", "lti.session.resume"]


async def test_launch_with_a_staff_cookie_of_the_same_site(web_server: RunningApp, ctx: Context,
                                                            lms: LtiPlatform) -> None:
    """An LMS on the same site as the tool (lms.uni.edu, proctor.uni.edu) sends the staff cookie along with the
    launch POST: the launch neither needs a CSRF token nor acts as that staff member."""
    staff = await logged_in(web_server.url, await make_user(ctx, "proctor"))
    try:
        staff_cookie = next(c for c in staff.cookie_jar if c.key == "proctor_session").value
    finally:
        await staff.close()
    spec = LaunchSpec(name="Same Site")
    async with _http() as http:
        login = await start_login(http, web_server.url, lms.login_params(lms.prepare(spec)), method="POST")
        action, fields = await platform_auth(http, login)
        status, headers, body = await post_launch(http, action, fields,
                                                  f"{login.cookie}; proctor_session={staff_cookie}")
    assert status == 303 and headers["Location"].startswith("/join/"), body
    [mapped] = await _lti_sessions(ctx, spec.sub)
    assert mapped["candidate"] == "Same Site"


async def test_learner_name_falls_back_to_given_and_family_name(web_server: RunningApp, ctx: Context,
                                                                 lms: LtiPlatform) -> None:
    spec = LaunchSpec(name=None, given_name="Alan", family_name="Turing",
                      resource_link={"id": "rl-names", "title": "x" * 500})
    status, _, body = await launch(web_server.url, lms, spec)
    assert status == 303, body
    [mapped] = await _lti_sessions(ctx, spec.sub)
    assert mapped["candidate"] == "Alan Turing" and mapped["exam"] == "x" * 200  # bounded as the REST API is


# --- instructor -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("role", [INSTRUCTOR, SYSTEM_ADMIN])
async def test_instructor_launch_signs_in_and_opens_the_exam_sessions(web_server: RunningApp, ctx: Context,
                                                                      lms: LtiPlatform, role: str) -> None:
    base = web_server.url
    title = f"Exam {uuid.uuid4().hex[:6]}"
    link = {"id": f"rl-{uuid.uuid4().hex[:6]}", "title": title}
    student = LaunchSpec(name="Student Sam", resource_link=link)
    assert (await launch(base, lms, student))[0] == 303
    teacher = LaunchSpec(name="Prof Ines", roles=[role], resource_link=link)
    status, headers, body = await launch(base, lms, teacher)
    assert status == 303, body
    assert urlsplit(headers["Location"]).path == "/"
    assert parse_qs(urlsplit(headers["Location"]).query)["q"] == [title]
    session_cookie = next(h for h in headers.getall("Set-Cookie") if h.startswith("proctor_session="))
    morsel = SimpleCookie(session_cookie)["proctor_session"]
    assert morsel["httponly"] is True and morsel["samesite"] == "Lax"
    async with aiohttp.ClientSession(headers={"Cookie": f"proctor_session={morsel.value}"}) as http:
        async with http.get(base + headers["Location"]) as response:
            page = await response.text()
            assert response.status == 200
    assert "Student Sam" in page and title in page
    async with ctx.pool.acquire() as conn:
        user = await conn.fetchrow("SELECT u.* FROM lti_users l JOIN users u ON u.id = l.user_id WHERE l.sub = $1",
                                   teacher.sub)
        created = await conn.fetchval("SELECT count(*) FROM audit_log WHERE action = 'lti.user.create' "
                                      "AND target = $1", f"user:{user['name']}")
    assert user["role"] == "proctor" and created == 1
    # The second launch signs in the same account; a disabled account is refused.
    status, _, _ = await launch(base, lms, teacher)
    async with ctx.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM lti_users WHERE sub = $1", teacher.sub) == 1
        await conn.execute("UPDATE users SET disabled = true WHERE id = $1", user["id"])
    assert status == 303
    status, _, body = await launch(base, lms, teacher)
    _refusal(status, body, "disabled", 403)


# --- deep linking ---------------------------------------------------------------------------------------------------
async def test_deep_linking_returns_a_response_signed_with_our_key(web_server: RunningApp, ctx: Context,
                                                                   lms: LtiPlatform) -> None:
    base = web_server.url
    spec = LaunchSpec(message_type="LtiDeepLinkingRequest", roles=[INSTRUCTOR], resource_link=None)
    status, headers, page = await launch(base, lms, spec)
    assert status == 200, page
    assert "frame-ancestors " + lms.url in headers["Content-Security-Policy"]  # the LMS may frame the picker
    fields = hidden_fields(page)
    assert form_action(page) == "/lti/deep-link" and fields["ref"]
    async with _http() as http:
        async with http.post(f"{base}/lti/deep-link", data={"ref": fields["ref"], "kind": "proctored_exam",
                                                             "title": "Proctored final"}) as response:
            returned = await response.text()
            assert response.status == 200, returned
            csp = response.headers["Content-Security-Policy"]
        assert f"form-action {lms.url}" in csp and "script-src 'nonce-" in csp
        assert form_action(returned) == f"{lms.url}/deep-link-return"
        token = hidden_fields(returned)["JWT"]
        # Verified with the keys the tool publishes, as the platform does.
        async with http.get(f"{base}/.well-known/jwks.json") as response:
            keyset = jwt.PyJWKSet.from_dict(await response.json())
        # The reference is single-use.
        async with http.post(f"{base}/lti/deep-link", data={"ref": fields["ref"], "kind": "proctored_exam"}) as again:
            _refusal(again.status, await again.text(), "state", 403)
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(k for k in keyset.keys if k.key_id == kid)
    claims = jwt.decode(token, key.key, algorithms=["RS256"], audience=lms.issuer)
    assert claims["iss"] == lms.client_id
    assert claims[CLAIM + "message_type"] == "LtiDeepLinkingResponse" and claims[CLAIM + "version"] == "1.3.0"
    assert claims[CLAIM + "deployment_id"] == lms.deployment_id
    assert claims["https://purl.imsglobal.org/spec/lti-dl/claim/data"] == spec.deep_link_data
    [item] = claims["https://purl.imsglobal.org/spec/lti-dl/claim/content_items"]
    assert item["type"] == "ltiResourceLink" and item["title"] == "Proctored final"
    assert item["url"] == f"{base}/lti/launch" and item["custom"] == {"proctoring": "proctored_exam"}
    with pytest.raises(jwt.InvalidSignatureError):  # the control: another key does not verify it
        jwt.decode(token, jwt.PyJWK(lms.jwks()["keys"][0]).key, algorithms=["RS256"], audience=lms.issuer)
    # A learner cannot attach content.
    status, _, body = await launch(base, lms, LaunchSpec(message_type="LtiDeepLinkingRequest", resource_link=None))
    _refusal(status, body, "role", 403)


# --- refusals -------------------------------------------------------------------------------------------------------
REFUSED = {
    "bad_signature": (LaunchSpec(sign_with_other_key=True), "signature", 401),
    "payload_changed_after_signing": (LaunchSpec(tamper_payload=True), "signature", 401),
    "wrong_audience": (LaunchSpec(aud="another-tool"), "audience", 403),
    "expired": (LaunchSpec(exp_in_s=-120, iat_offset_s=-600), "expired", 401),
    "issued_in_the_future": (LaunchSpec(iat_offset_s=3600, exp_in_s=7200), "expired", 401),
    "unknown_issuer_in_token": (LaunchSpec(iss="https://lms.invalid"), "unknown_issuer", 403),
    "unknown_deployment": (LaunchSpec(deployment_id="deployment-nobody-made"), "deployment", 403),
    "nonce_not_the_one_issued": (LaunchSpec(nonce="a-nonce-from-elsewhere"), "nonce", 403),
    "no_learner_or_instructor_role": (LaunchSpec(roles=[MENTOR]), "role", 403),
    "no_resource_link": (LaunchSpec(resource_link=None), "message", 400),
    "wrong_lti_version": (LaunchSpec(extra={CLAIM + "version": "1.1"}), "message", 400),
}


@pytest.mark.parametrize("case", list(REFUSED))
async def test_refused_launches(web_server: RunningApp, ctx: Context, lms: LtiPlatform, case: str) -> None:
    spec, code, expected = REFUSED[case]
    # The deployment check at login would catch an unknown deployment first; the token's claim must be checked too.
    status, headers, body = await launch(web_server.url, lms, spec, deployment=case != "unknown_deployment")
    _refusal(status, body, code, expected)
    assert headers["Content-Type"].startswith("text/html") and headers["Cache-Control"] == "no-store"
    assert await _lti_sessions(ctx, spec.sub) == []  # nothing was made


async def test_replayed_launches_are_refused(web_server: RunningApp, ctx: Context, lms: LtiPlatform) -> None:
    base = web_server.url
    spec = LaunchSpec()
    async with _http() as http:
        login = await start_login(http, base, lms.login_params(lms.prepare(spec)))
        action, fields = await platform_auth(http, login)
        status, headers, _ = await post_launch(http, action, fields, login.cookie)
        assert status == 303
        # The state cookie is dropped once used.
        gone = SimpleCookie(next(h for h in headers.getall("Set-Cookie") if h.startswith(login.cookie_name)))
        assert gone[login.cookie_name].value == "" and gone[login.cookie_name]["max-age"] == "0"
        # The very same POST again (state and nonce used up).
        status, _, body = await post_launch(http, action, fields, login.cookie)
        _refusal(status, body, "state", 403)
        # The captured id_token under a fresh login of the attacker's own: its nonce is not the one issued.
        fresh = await start_login(http, base, lms.login_params(lms.prepare(LaunchSpec())))
        state = parse_qs(urlsplit(fresh.location).query)["state"][0]
        status, _, body = await post_launch(http, action, {"id_token": fields["id_token"], "state": state},
                                            fresh.cookie)
        _refusal(status, body, "nonce", 403)
    assert len(await _lti_sessions(ctx, spec.sub)) == 1


async def test_state_must_match_the_browser_cookie(web_server: RunningApp, lms: LtiPlatform) -> None:
    base = web_server.url
    async with _http() as http:
        # No cookie (a browser that dropped it, or an attacker's page posting a launch into a victim's browser).
        login = await start_login(http, base, lms.login_params(lms.prepare(LaunchSpec())))
        action, fields = await platform_auth(http, login)
        status, _, body = await post_launch(http, action, fields, None)
        _refusal(status, body, "state", 403)
        # Another login's cookie.
        first = await start_login(http, base, lms.login_params(lms.prepare(LaunchSpec())))
        second = await start_login(http, base, lms.login_params(lms.prepare(LaunchSpec())))
        action, fields = await platform_auth(http, first)
        status, _, body = await post_launch(http, action, fields, f"{first.cookie_name}={second.cookie_value}")
        _refusal(status, body, "state", 403)
        # A state this server never issued, and none at all.
        for state in ("state-00000000-0000-0000-0000-000000000000", "", "<script>"):
            status, _, body = await post_launch(http, action, {**fields, "state": state}, second.cookie)
            _refusal(status, body, "state", 403)


async def test_refused_logins(web_server: RunningApp, lms: LtiPlatform) -> None:
    base = web_server.url
    hint = lms.prepare(LaunchSpec())
    cases = [
        ({**lms.login_params(hint), "iss": "https://unknown.invalid"}, "unknown_issuer", 403),
        ({**lms.login_params(hint), "client_id": "not-registered"}, "unknown_client", 403),
        ({**lms.login_params(hint), "lti_deployment_id": "nope"}, "deployment", 403),
        ({"iss": lms.issuer}, "format", 400),  # no login_hint
        ({**lms.login_params(hint), "iss": "x\x00y"}, "format", 400),
        ({**lms.login_params(hint), "login_hint": "h" * 5_000}, "format", 400),
    ]
    async with _http() as http:
        for params, code, expected in cases:
            for method in ("GET", "POST"):
                request = (http.get(f"{base}/lti/login", params=params, allow_redirects=False) if method == "GET"
                           else http.post(f"{base}/lti/login", data=params, allow_redirects=False))
                async with request as response:
                    _refusal(response.status, await response.text(), code, expected)
                    assert "Set-Cookie" not in response.headers


async def test_malformed_launch_posts_are_4xx(web_server: RunningApp, lms: LtiPlatform) -> None:
    base = web_server.url
    async with _http() as http:
        login = await start_login(http, base, lms.login_params(lms.prepare(LaunchSpec())))
        _, fields = await platform_auth(http, login)
        bodies = [
            ({}, "format", 400),
            ({"state": fields["state"]}, "format", 400),
            ({"error": "login_required", "error_description": "no", "state": fields["state"]}, "format", 400),
            ({"id_token": "not.a.jwt", "state": fields["state"]}, "format", 400),
            ({"id_token": "abc", "state": "state-00000000-0000-0000-0000-000000000000"}, "state", 403),
            ({"id_token": "a" * 70_000, "state": fields["state"]}, "format", 400),
            ({"id_token": "x\x00y", "state": fields["state"]}, "format", 400),
        ]
        for body, code, expected in bodies:
            status, _, page = await post_launch(http, f"{base}/lti/launch", body, login.cookie)
            _refusal(status, page, code, expected)
        async with http.post(f"{base}/lti/launch", data=b"\xff\xfe", allow_redirects=False,
                             headers={"Content-Type": "application/x-www-form-urlencoded; charset=klingon"}) as r:
            assert 400 <= r.status < 500


async def test_unreachable_platform_keys_are_a_clear_error(web_server: RunningApp, ctx: Context) -> None:
    async with LtiPlatform() as other:
        other.tool_base = web_server.url
        registration = {**other.registration(), "key_set_url": f"http://127.0.0.1:{free_port()}/jwks"}
        async with ctx.pool.acquire() as conn:
            platform = await store.add_platform(conn, actor="test", **registration)
        try:
            forget_jwks()
            status, _, body = await launch(web_server.url, other, LaunchSpec())
            _refusal(status, body, "jwks", 502)
        finally:
            async with ctx.pool.acquire() as conn:
                await store.remove_platform(conn, platform.id, actor="test")
        # Unregistered: its launches are refused at login.
        async with _http() as http:
            async with http.get(f"{web_server.url}/lti/login", params=other.login_params(other.prepare(LaunchSpec())),
                                allow_redirects=False) as response:
                _refusal(response.status, await response.text(), "unknown_issuer", 403)


async def test_platform_key_rotation_is_picked_up(web_server: RunningApp, lms: LtiPlatform) -> None:
    assert (await launch(web_server.url, lms, LaunchSpec()))[0] == 303  # the key set is cached now
    old_key, old_kid = lms.key, lms.kid
    lms.key, lms.kid = lms.other_key, f"rotated-{uuid.uuid4().hex[:6]}"
    lms.other_key = old_key
    try:
        fetches = lms.jwks_fetches
        assert (await launch(web_server.url, lms, LaunchSpec()))[0] == 303
        assert lms.jwks_fetches == fetches + 1  # an unknown kid: fetched once more
    finally:
        lms.other_key, lms.key, lms.kid = lms.key, old_key, old_kid


# --- admin page and CLI -------------------------------------------------------------------------------------------
async def test_admin_page_adds_lists_and_removes_platforms(web_server: RunningApp, ctx: Context) -> None:
    base = web_server.url
    admin = await make_user(ctx, "admin")
    http = await logged_in(base, admin)
    try:
        async with http.get(f"{base}/admin/lti") as response:
            page = await response.text()
            assert response.status == 200
        csrf = page_csrf(page)
        assert f"{base}/lti/login" in page and f"{base}/.well-known/jwks.json" in page
        issuer = f"https://moodle-{uuid.uuid4().hex[:6]}.example.edu"
        form = {"csrf_token": csrf, "name": "Moodle <test>", "issuer": issuer, "client_id": "abc123",
                "deployment_ids": "1, 2", "auth_login_url": f"{issuer}/mod/lti/auth.php",
                "auth_token_url": f"{issuer}/mod/lti/token.php", "key_set_url": f"{issuer}/mod/lti/certs.php"}
        async with http.post(f"{base}/admin/lti", data=form, allow_redirects=False) as response:
            assert response.status == 303 and response.headers["Location"] == "/admin/lti?done=added"
        async with http.post(f"{base}/admin/lti", data=form) as response:  # twice: refused, said why
            assert response.status == 400 and "already registered" in await response.text()
        async with http.post(f"{base}/admin/lti", data={**form, "key_set_url": "javascript:alert(1)"}) as response:
            assert response.status == 400 and "key set URL" in await response.text()
        async with http.post(f"{base}/admin/lti", data={k: v for k, v in form.items() if k != "csrf_token"},
                             allow_redirects=False) as response:
            assert response.status == 403  # CSRF
        async with http.get(f"{base}/admin/lti") as response:
            page = await response.text()
        assert "Moodle &lt;test&gt;" in page and issuer in page
        async with ctx.pool.acquire() as conn:
            [platform] = await store.platforms_for_issuer(conn, issuer)
            assert platform.deployment_ids == ("1", "2")
            assert await conn.fetchval("SELECT count(*) FROM audit_log WHERE action = 'lti.platform.add' "
                                       "AND actor = $1", admin) == 1
        async with http.post(f"{base}/admin/lti/remove", data={"csrf_token": csrf, "platform_id": "x"}) as response:
            assert response.status == 404
        async with http.post(f"{base}/admin/lti/remove", data={"csrf_token": csrf, "platform_id": str(platform.id)},
                             allow_redirects=False) as response:
            assert response.status == 303
        async with ctx.pool.acquire() as conn:
            assert await store.platforms_for_issuer(conn, issuer) == []
    finally:
        await http.close()
    proctor = await make_user(ctx, "proctor")
    http = await logged_in(base, proctor)
    try:
        async with http.get(f"{base}/admin/lti") as response:
            assert response.status == 403
    finally:
        await http.close()


def _cli(servers: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proctor", "lti", *args], cwd=ROOT, env=dict(os.environ, **servers),
                          capture_output=True, text=True, timeout=60)


def test_cli_adds_lists_and_removes_platforms(servers: dict[str, str]) -> None:
    issuer = f"https://canvas-{uuid.uuid4().hex[:6]}.instructure.com"
    args = ["add-platform", "--issuer", issuer, "--client-id", "10000000000001", "--deployment-id", "7:abc",
            "--deployment-id", "8:def", "--auth-login-url", "https://sso.canvaslms.com/api/lti/authorize_redirect",
            "--auth-token-url", "https://sso.canvaslms.com/login/oauth2/token",
            "--key-set-url", "https://sso.canvaslms.com/api/lti/security/jwks", "--name", "Canvas"]
    added = _cli(servers, *args)
    assert added.returncode == 0, added.stderr
    assert "registered platform" in added.stdout and "/lti/login" in added.stdout
    assert _cli(servers, *args).returncode == 2  # already registered
    bad = _cli(servers, *[a if a != "https://sso.canvaslms.com/api/lti/security/jwks" else "ftp://x" for a in args])
    assert bad.returncode == 2 and "key set URL" in bad.stderr
    listing = _cli(servers, "list")
    line = next(row for row in listing.stdout.splitlines() if issuer in row)
    platform_id = line.split("\t")[0]
    assert "7:abc,8:def" in line
    assert _cli(servers, "remove", platform_id).returncode == 0
    assert issuer not in _cli(servers, "list").stdout
    assert _cli(servers, "remove", platform_id).returncode == 1
