"""An LTI 1.3 platform (an LMS) for the tests, built from the IMS specs (LTI Core 1.3, Security Framework 1.0, Deep
Linking 2.0), not from the tool's code: its own RSA keys with the JWKS served over loopback by a real aiohttp
server, real RS256 id_tokens signed with pyjwt, and the flow a browser goes through:

  course page (GET /course/<hint>: auto-submits the third-party initiated login to the tool's login URL)
  -> tool's OIDC login -> 302 to our auth endpoint (GET|POST /auth: checks the authentication request)
  -> our page that form_posts id_token + state to the tool's redirect_uri -> the tool's launch.

A test prepares a launch (LaunchSpec: who, which role, which resource link, and any tampering for the refusal
cases), gets its login hint, and either drives the steps over HTTP or opens /course/<hint> in Chromium.
The deep-linking return URL (POST /deep-link-return) keeps the JWTs it receives.
"""

from __future__ import annotations

import html
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.net import free_port

CLAIM = "https://purl.imsglobal.org/spec/lti/claim/"
DL_CLAIM = "https://purl.imsglobal.org/spec/lti-dl/claim/"
LEARNER = "http://purl.imsglobal.org/vocab/lis/v2/membership#Learner"
INSTRUCTOR = "http://purl.imsglobal.org/vocab/lis/v2/membership#Instructor"
SYSTEM_ADMIN = "http://purl.imsglobal.org/vocab/lis/v2/system/person#Administrator"
MENTOR = "http://purl.imsglobal.org/vocab/lis/v2/membership#Mentor"


def _rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _public_jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    jwk = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {**jwk, "kid": kid, "alg": "RS256", "use": "sig"}


@dataclass
class LaunchSpec:
    """One launch the platform will make, and how to spoil it for a refusal test."""

    message_type: str = "LtiResourceLinkRequest"
    sub: str = field(default_factory=lambda: f"user-{uuid.uuid4().hex[:10]}")
    name: str | None = "Ada Lovelace"
    given_name: str | None = None
    family_name: str | None = None
    email: str | None = None
    roles: list[str] = field(default_factory=lambda: [LEARNER])
    resource_link: dict[str, Any] | None = field(default_factory=lambda: {"id": f"rl-{uuid.uuid4().hex[:8]}",
                                                                          "title": "Midterm"})
    context: dict[str, Any] | None = field(default_factory=lambda: {"id": "course-1", "title": "Maths 101"})
    deployment_id: str | None = None  # None: the platform's deployment
    deep_link_data: str = "opaque-data-42"
    # Tampering:
    iss: str | None = None  # another issuer in the token
    aud: str | list[str] | None = None  # another audience
    exp_in_s: int = 300  # negative: expired
    iat_offset_s: int = 0
    nonce: str | None = None  # another nonce than the one of the auth request
    sign_with_other_key: bool = False  # same kid, another key: a bad signature
    tamper_payload: bool = False  # change a claim after signing
    extra: dict[str, Any] = field(default_factory=dict)


class LtiPlatform:
    """A running platform: `url`, `issuer`, `client_id`, `deployment_id`; `async with LtiPlatform(...) as lms`."""

    def __init__(self, *, host: str = "127.0.0.1", client_id: str | None = None,
                 deployment_id: str = "deployment-1") -> None:
        self.port = free_port()
        self.url = f"http://{host}:{self.port}"
        self.issuer = self.url  # as Moodle does: the site URL
        self.client_id = client_id or f"client-{uuid.uuid4().hex[:8]}"
        self.deployment_id = deployment_id
        self.key = _rsa()
        self.kid = f"platform-{uuid.uuid4().hex[:8]}"
        self.other_key = _rsa()
        self.tool_base = ""  # set by register()
        self.launches: dict[str, LaunchSpec] = {}
        self.auth_requests: list[dict[str, str]] = []
        self.deep_link_jwts: list[str] = []
        self.jwks_fetches = 0
        self._runner: web.AppRunner | None = None

    # --- registration values -------------------------------------------------------------------------------------
    @property
    def auth_login_url(self) -> str:
        return f"{self.url}/auth"

    @property
    def token_url(self) -> str:
        return f"{self.url}/token"

    @property
    def jwks_url(self) -> str:
        return f"{self.url}/jwks"

    def registration(self) -> dict[str, Any]:
        """What an admin types into the tool (proctor lti add-platform / the admin page)."""
        return {"name": f"Emulated LMS {self.port}", "issuer": self.issuer, "client_id": self.client_id,
                "auth_login_url": self.auth_login_url, "auth_token_url": self.token_url,
                "key_set_url": self.jwks_url, "deployment_ids": [self.deployment_id]}

    # --- the server ------------------------------------------------------------------------------------------------
    async def __aenter__(self) -> LtiPlatform:
        app = web.Application()
        app.router.add_get("/jwks", self._jwks)
        app.router.add_route("*", "/auth", self._auth)
        app.router.add_post("/deep-link-return", self._deep_link_return)
        app.router.add_get("/course/{hint}", self._course_page)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def jwks(self) -> dict[str, Any]:
        return {"keys": [_public_jwk(self.key, self.kid)]}

    async def _jwks(self, request: web.Request) -> web.Response:
        self.jwks_fetches += 1
        return web.json_response(self.jwks())

    # --- launches ---------------------------------------------------------------------------------------------------
    def prepare(self, spec: LaunchSpec) -> str:
        """Register a launch; its login hint (also the lti_message_hint)."""
        hint = uuid.uuid4().hex
        self.launches[hint] = spec
        return hint

    def login_params(self, hint: str, *, client_id: bool = True, deployment: bool = True) -> dict[str, str]:
        """The third-party initiated login's parameters (LTI Core 1.3 §4.1 / Security Framework §5.1.1.1)."""
        params = {"iss": self.issuer, "login_hint": hint, "lti_message_hint": hint,
                  "target_link_uri": f"{self.tool_base}/lti/launch"}
        if client_id:
            params["client_id"] = self.client_id
        if deployment:
            params["lti_deployment_id"] = self.launches[hint].deployment_id or self.deployment_id
        return params

    def id_token(self, spec: LaunchSpec, nonce: str) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": spec.iss or self.issuer,
            "aud": spec.aud if spec.aud is not None else self.client_id,
            "azp": self.client_id,
            "sub": spec.sub,
            "iat": now + spec.iat_offset_s,
            "exp": now + spec.exp_in_s,
            "nonce": spec.nonce or nonce,
            CLAIM + "message_type": spec.message_type,
            CLAIM + "version": "1.3.0",
            CLAIM + "deployment_id": spec.deployment_id or self.deployment_id,
            CLAIM + "target_link_uri": f"{self.tool_base}/lti/launch",
            CLAIM + "roles": spec.roles,
            CLAIM + "tool_platform": {"guid": self.issuer, "name": "Emulated LMS", "product_family_code": "emulator"},
        }
        for name in ("name", "given_name", "family_name", "email"):
            if getattr(spec, name) is not None:
                claims[name] = getattr(spec, name)
        if spec.context is not None:
            claims[CLAIM + "context"] = spec.context
        if spec.message_type == "LtiResourceLinkRequest" and spec.resource_link is not None:
            claims[CLAIM + "resource_link"] = spec.resource_link
        if spec.message_type == "LtiDeepLinkingRequest":
            claims[DL_CLAIM + "deep_linking_settings"] = {
                "deep_link_return_url": f"{self.url}/deep-link-return", "accept_types": ["ltiResourceLink"],
                "accept_presentation_document_targets": ["iframe", "window"], "accept_multiple": False,
                "data": spec.deep_link_data}
        claims.update(spec.extra)
        key = self.other_key if spec.sign_with_other_key else self.key
        token = jwt.encode(claims, _pem(key), algorithm="RS256", headers={"kid": self.kid})
        if spec.tamper_payload:  # a well-signed token whose claims were changed afterwards (say, to become admin)
            header, _, signature = token.split(".")
            claims[CLAIM + "roles"] = [SYSTEM_ADMIN]
            payload = jwt.utils.base64url_encode(json.dumps(claims).encode()).decode()
            token = f"{header}.{payload}.{signature}"
        return token

    async def _auth(self, request: web.Request) -> web.Response:
        """The OIDC authentication request (Security Framework §5.1.1.2): checks it, then form_posts the id_token."""
        params = dict(request.query) if request.method == "GET" else {k: str(v) for k, v in
                                                                       (await request.post()).items()}
        self.auth_requests.append(params)
        expected = {"scope": "openid", "response_type": "id_token", "response_mode": "form_post", "prompt": "none",
                    "client_id": self.client_id}
        for name, value in expected.items():
            if params.get(name) != value:
                return web.Response(status=400, text=f"invalid_request: {name} must be {value!r}")
        if params.get("redirect_uri") != f"{self.tool_base}/lti/launch":
            return web.Response(status=400, text="invalid_request: redirect_uri is not registered")
        spec = self.launches.get(params.get("login_hint", ""))
        if spec is None or params.get("lti_message_hint") != params.get("login_hint"):
            return web.Response(status=400, text="login_required: unknown login_hint")
        if not params.get("nonce") or not params.get("state"):
            return web.Response(status=400, text="invalid_request: nonce and state are required")
        token = self.id_token(spec, params["nonce"])
        page = (f'<!doctype html><html><body><form id="launch" method="post" '
                f'action="{html.escape(params["redirect_uri"])}">'
                f'<input type="hidden" name="id_token" value="{html.escape(token)}">'
                f'<input type="hidden" name="state" value="{html.escape(params["state"])}">'
                '<noscript><button type="submit">Continue</button></noscript></form>'
                '<script>document.getElementById("launch").submit();</script></body></html>')
        return web.Response(text=page, content_type="text/html")

    async def _course_page(self, request: web.Request) -> web.Response:
        """The LMS page a user clicks the activity on: starts the tool's third-party initiated login (a form POST)."""
        hint = request.match_info["hint"]
        if hint not in self.launches:
            raise web.HTTPNotFound()
        fields = "".join(f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
                         for k, v in self.login_params(hint).items())
        page = (f'<!doctype html><html><body><h1>Course</h1><form id="login" method="post" '
                f'action="{html.escape(self.tool_base)}/lti/login">{fields}</form>'
                '<script>document.getElementById("login").submit();</script></body></html>')
        return web.Response(text=page, content_type="text/html")

    async def _deep_link_return(self, request: web.Request) -> web.Response:
        form = await request.post()
        self.deep_link_jwts.append(str(form.get("JWT", "")))
        return web.Response(text="<!doctype html><p id='dl-received'>Content added</p>", content_type="text/html")


def hidden_fields(page: str) -> dict[str, str]:
    """name -> value of a page's hidden inputs (the auto-submitting forms)."""
    return {html.unescape(m.group(1)): html.unescape(m.group(2))
            for m in re.finditer(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page)}


def form_action(page: str) -> str:
    match = re.search(r'<form[^>]* action="([^"]+)"', page)
    assert match, page
    return html.unescape(match.group(1))
