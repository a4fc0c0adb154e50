"""pylti1p3 on aiohttp: its Request, CookieService, SessionService, Redirect and ToolConf for this server, and the
launch validation with each refusal named.

pylti1p3 does every id_token check (RS256 signature against the platform's JWKS, expiry, issuer and client id
registered, deployment registered, nonce, message claims); nothing here decodes a JWT for trust. What this module
adds around it:
- the objects are built per request from what the async route already loaded (the platforms of the issuer from
  Postgres, the state record from Redis), so pylti1p3 runs without touching the event loop, on lti.threads;
- the state is checked twice: the browser's `lti1p3-state-*` cookie must equal the form's `state` (pylti1p3), and
  the route has consumed the server-side record of that state (Redis, single use, with the nonce it was issued
  with): the token's nonce must be that one, so a nonce is good for one launch only;
- the platform's JWKS is fetched with a timeout, a size limit and no redirects, cached for a few minutes, and
  fetched again once when a token names a key the cached set lacks (the platform rotated its keys);
- pylti1p3 raises LtiException with a message for everything; `validate` turns each step's failure into a
  Refusal whose code and text a person can act on.
"""

from __future__ import annotations

import hmac
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt
import requests
from pylti1p3.cookie import CookieService
from pylti1p3.deep_link import DeepLink
from pylti1p3.deep_link_resource import DeepLinkResource
from pylti1p3.deployment import Deployment
from pylti1p3.exception import LtiException
from pylti1p3.message_launch import MessageLaunch
from pylti1p3.oidc_login import OIDCLogin
from pylti1p3.redirect import Redirect
from pylti1p3.registration import Registration, TKeySet
from pylti1p3.request import Request
from pylti1p3.roles import AbstractRole, StudentRole, TeacherRole
from pylti1p3.session import SessionService
from pylti1p3.tool_config import ToolConfAbstract

from proctor.store.lti import Platform, ToolKey

CLAIM = "https://purl.imsglobal.org/spec/lti/claim/"
DEEP_LINKING_SETTINGS = "https://purl.imsglobal.org/spec/lti-dl/claim/deep_linking_settings"
JWKS_TTL_S = 300.0
JWKS_TIMEOUT_S = (5.0, 10.0)  # connect, read
JWKS_MAX_BYTES = 1_000_000
STATE_COOKIE_PREFIX = "lti1p3-"

# code -> (HTTP status, what the person launching reads)
REFUSALS: dict[str, tuple[int, str]] = {
    "state": (403, "This launch does not match a login started in this browser: the state is missing, expired, "
                   "already used, or not the one this browser's cookie holds. Start the exam again from the LMS "
                   "(if the LMS shows the tool inside a frame, open it in a new window)."),
    "format": (400, "The launch's id_token is not a well-formed LTI 1.3 token."),
    "unknown_issuer": (403, "The platform that sent this launch is not registered with this proctoring server. "
                            "An administrator adds it under Admin → LMS (LTI)."),
    "unknown_client": (403, "This LMS's client id for the tool is not registered with this proctoring server. "
                            "An administrator adds it under Admin → LMS (LTI)."),
    "audience": (403, "The launch's id_token is not addressed to this tool: its audience (aud) is not the client id "
                      "registered for that platform."),
    "signature": (401, "The launch's id_token signature does not verify against the platform's published keys."),
    "expired": (401, "The launch's id_token has expired (or is not valid yet). Start the exam again from the LMS."),
    "deployment": (403, "The launch comes from a deployment of the tool that is not registered with this server."),
    "nonce": (403, "The launch's nonce is not the one issued for this login: a launch can be used only once."),
    "message": (400, "The launch message lacks required LTI claims."),
    "unsupported": (400, "This kind of LTI message is not supported by this tool."),
    "role": (403, "Your role in the course is neither learner nor instructor, so there is nothing to open here."),
    "disabled": (403, "The staff account this LMS user signs in as has been disabled by an administrator of this "
                      "proctoring server."),
    "jwks": (502, "The platform's public keys could not be fetched to verify the launch; try again shortly."),
}


class Refusal(Exception):
    """A launch or login refused, with the code of REFUSALS and a detail for logs and the page."""

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code
        self.detail = detail

    @property
    def status(self) -> int:
        return REFUSALS[self.code][0]

    @property
    def message(self) -> str:
        return REFUSALS[self.code][1]


# --- pylti1p3's abstractions ---------------------------------------------------------------------------------------
class LaunchRequest(Request):
    """The parameters (query for GET, form for POST) and cookies of one aiohttp request, read in advance."""

    def __init__(self, params: Mapping[str, str], cookies: Mapping[str, str], secure: bool) -> None:
        self._params = dict(params)
        self._cookies = dict(cookies)
        self._secure = secure

    @property
    def session(self) -> dict[str, Any]:
        return {}  # pylti1p3's own session storage is replaced by StateSession

    def is_secure(self) -> bool:
        return self._secure

    def get_param(self, key: str) -> str:
        return self._params.get(key)  # type: ignore[return-value]  # pylti1p3 reads None as absent

    def get_cookie(self, key: str) -> str | None:
        return self._cookies.get(key)


class Cookies(CookieService):
    """Reads the request's cookies; collects the ones pylti1p3 sets, for the route to put on its response with the
    attributes this server chooses (lti.routes.state_cookie)."""

    def __init__(self, request: LaunchRequest) -> None:
        self._request = request
        self.to_set: dict[str, tuple[str, int | None]] = {}

    def get_cookie(self, name: str) -> str | None:
        return self._request.get_cookie(f"{self._cookie_prefix}-{name}")

    def set_cookie(self, name: str, value: str | int, exp: int | None = 3600) -> None:
        self.to_set[f"{self._cookie_prefix}-{name}"] = (str(value), exp)


class StateSession(SessionService):
    """pylti1p3's nonce and state bookkeeping for one request. At login it records the nonce pylti1p3 made (the route
    keeps it in Redis under the state); at launch the only nonce it accepts is the one the consumed state held."""

    def __init__(self, expected_nonce: str | None = None) -> None:
        self.nonce: str | None = None
        self._expected = expected_nonce

    def save_nonce(self, nonce: str) -> None:
        self.nonce = nonce

    def check_nonce(self, nonce: str) -> bool:
        return (self._expected is not None and isinstance(nonce, str)
                and hmac.compare_digest(nonce.encode(), self._expected.encode()))

    def save_launch_data(self, key: str, jwt_body: Any) -> None:
        pass  # the route keeps what it needs (deep linking) in Redis itself

    def get_launch_data(self, key: str) -> Any:
        return {}

    def save_state_params(self, state: str, params: Any) -> None:
        pass

    def get_state_params(self, state: str) -> Any:
        return {}

    def set_state_valid(self, state: str, id_token_hash: str) -> None:
        pass

    def check_state_is_valid(self, state: str, id_token_hash: str) -> bool:
        return False  # never a shortcut: the state cookie must match every time

    def set_data_storage(self, data_storage: Any) -> None:
        pass

    def set_launch_data_lifetime(self, time_sec: int) -> None:
        pass


class _Redirect(Redirect[str]):
    def __init__(self, location: str) -> None:
        self._location = location

    def do_redirect(self) -> str:
        return self._location

    def do_js_redirect(self) -> str:
        return self._location

    def set_redirect_url(self, location: str) -> None:
        self._location = location

    def get_redirect_url(self) -> str:
        return self._location


class ToolConf(ToolConfAbstract[LaunchRequest]):
    """The registrations of one issuer (loaded from Postgres by the route) and our signing key."""

    def __init__(self, platforms: list[Platform], key: ToolKey | None = None, public_pem: str | None = None) -> None:
        self.platforms = platforms
        self._key = key
        self._public_pem = public_pem

    # An issuer may have several client ids (one per registration); pylti1p3 then always asks with the client id.
    def check_iss_has_one_client(self, iss: str) -> bool:
        return False

    def check_iss_has_many_clients(self, iss: str) -> bool:
        return True

    def has_issuer(self, iss: str) -> bool:
        return any(p.issuer == iss for p in self.platforms)

    def platform(self, iss: str, client_id: str | None) -> Platform | None:
        """The registration of `iss` with `client_id`; with no client id (optional at login), the issuer's only one."""
        mine = [p for p in self.platforms if p.issuer == iss]
        if client_id is None:
            return mine[0] if len(mine) == 1 else None
        return next((p for p in mine if p.client_id == client_id), None)

    def registration(self, platform: Platform) -> Registration:
        reg = (Registration().set_issuer(platform.issuer).set_client_id(platform.client_id)
               .set_auth_login_url(platform.auth_login_url).set_auth_token_url(platform.auth_token_url)
               .set_key_set_url(platform.key_set_url))
        if self._key is not None:
            reg.set_tool_private_key(self._key.private_pem)
            reg.set_tool_public_key(self._public_pem)
        return reg

    def find_registration_by_issuer(self, iss: str, *args: Any, **kwargs: Any) -> Registration:
        platform = self.platform(iss, None)
        return self.registration(platform) if platform else None  # type: ignore[return-value]

    def find_registration_by_params(self, iss: str, client_id: str, *args: Any, **kwargs: Any) -> Registration:
        platform = self.platform(iss, client_id)
        return self.registration(platform) if platform else None  # type: ignore[return-value]

    def find_deployment(self, iss: str, deployment_id: str) -> Deployment | None:
        return self.find_deployment_by_params(iss, deployment_id, None)  # type: ignore[arg-type]

    def find_deployment_by_params(self, iss: str, deployment_id: str, client_id: str, *args: Any,
                                  **kwargs: Any) -> Deployment | None:
        platform = self.platform(iss, client_id)
        if platform is None or deployment_id not in platform.deployment_ids:
            return None
        return Deployment().set_deployment_id(deployment_id)


class ToolLogin(OIDCLogin[LaunchRequest, ToolConf, StateSession, Cookies, str]):
    """OIDC third-party initiated login: validates iss / login_hint / client_id against the registrations and builds
    the platform's auth URL (state cookie, nonce); the route sends the redirect."""

    def get_redirect(self, url: str) -> Redirect[str]:
        return _Redirect(url)


# --- the platform's keys ---------------------------------------------------------------------------------------------
_jwks_cache: dict[str, tuple[float, TKeySet]] = {}
_jwks_lock = threading.Lock()


def _fetch_jwks(session: requests.Session, url: str) -> TKeySet:
    try:
        with session.get(url, timeout=JWKS_TIMEOUT_S, allow_redirects=False, stream=True) as response:
            body = response.raw.read(JWKS_MAX_BYTES + 1, decode_content=True)
            status = response.status_code
    except requests.exceptions.RequestException as exc:
        raise Refusal("jwks", f"{url}: {type(exc).__name__}") from None
    if status != 200:
        raise Refusal("jwks", f"{url}: HTTP {status}")
    if len(body) > JWKS_MAX_BYTES:
        raise Refusal("jwks", f"{url}: larger than {JWKS_MAX_BYTES} bytes")
    try:
        keys = requests.models.complexjson.loads(body)
    except ValueError:
        raise Refusal("jwks", f"{url}: not JSON") from None
    if not isinstance(keys, dict) or not isinstance(keys.get("keys"), list):
        raise Refusal("jwks", f"{url}: not a JWK set")
    return keys  # type: ignore[return-value]


def forget_jwks() -> None:
    """Drop every cached key set (tests; a platform's admin may rotate keys and want them picked up at once)."""
    with _jwks_lock:
        _jwks_cache.clear()


class _AdminRole(AbstractRole):
    """An LMS administrator (system or institution role), who may set up proctoring as an instructor does."""

    _system_roles = ("Administrator", "SysAdmin")
    _institution_roles = ("Administrator",)


@dataclass(frozen=True)
class Launch:
    """A launch pylti1p3 accepted."""

    body: dict[str, Any]
    platform: Platform
    deployment_id: str
    message_type: str  # LtiResourceLinkRequest | LtiDeepLinkingRequest

    def claim(self, name: str) -> Any:
        return self.body.get(CLAIM + name)

    @property
    def is_instructor(self) -> bool:
        return TeacherRole(self.body).check() or _AdminRole(self.body).check()

    @property
    def is_learner(self) -> bool:
        return StudentRole(self.body).check()


class ToolLaunch(MessageLaunch[LaunchRequest, ToolConf, StateSession, Cookies]):
    """One launch's validation (run it on lti.threads: it may fetch the JWKS and verifies RSA)."""

    def __init__(self, request: LaunchRequest, tool_config: ToolConf, session_service: StateSession,
                 cookie_service: Cookies) -> None:
        http = requests.Session()
        http.headers["User-Agent"] = "proctor-lti/1.0"
        super().__init__(request, tool_config, session_service, cookie_service, requests_session=http)
        # pylti1p3 checks the audience itself (the client id must be the registration's); LTI requires exp and iat.
        self.set_jwt_verify_options({"verify_aud": False, "require": ["exp", "iat"]})  # type: ignore[dict-item]

    def _get_request_param(self, key: str) -> str:
        return self._request.get_param(key)

    def fetch_public_key(self, key_set_url: str) -> TKeySet:
        with _jwks_lock:
            cached = _jwks_cache.get(key_set_url)
        if cached is not None and time.monotonic() - cached[0] < JWKS_TTL_S:
            return cached[1]
        keys = _fetch_jwks(self._requests_session, key_set_url)
        with _jwks_lock:
            _jwks_cache[key_set_url] = (time.monotonic(), keys)
        return keys

    def get_public_key(self) -> tuple[str, str]:
        try:
            return super().get_public_key()
        except LtiException as exc:
            if "Unable to find public key" not in str(exc) or self._registration is None:
                raise
        # The cached set may predate a key rotation at the platform: fetch it once more.
        url = self._registration.get_key_set_url() or ""
        with _jwks_lock:
            _jwks_cache.pop(url, None)
        self._registration.set_key_set(None)
        return super().get_public_key()

    def validate(self) -> ToolLaunch:
        if self._restored:
            raise LtiException("Can't validate restored launch")
        self._validated = True
        try:
            self._step("state", self.validate_state)
            self._step("format", self.validate_jwt_format)
            self._step("registration", self.validate_registration)
            self._step("signature", self.validate_jwt_signature)
            self._step("deployment", self.validate_deployment)
            # After the signature: an unsigned token learns nothing from the nonce check.
            self._step("nonce", self.validate_nonce)
            self._step("message", self.validate_message)
        except Exception:
            self._validated = False
            raise
        return self

    def _step(self, step: str, check: Any) -> None:
        try:
            check()
        except Refusal:
            raise
        except LtiException as exc:
            raise Refusal(self._code(step, exc), str(exc)) from None
        except (ValueError, TypeError, KeyError, AttributeError) as exc:  # a claim of the wrong JSON type
            raise Refusal("format" if step in ("format", "registration") else "message", repr(exc)) from None

    def _code(self, step: str, exc: LtiException) -> str:
        text = str(exc)
        if step == "registration":
            if '"iss" is empty' in text:
                return "format"
            iss = self._jwt.get("body", {}).get("iss")
            return "audience" if isinstance(iss, str) and self._tool_config.has_issuer(iss) else "unknown_issuer"
        if step == "signature":
            cause = exc.__cause__
            if isinstance(cause, (jwt.ExpiredSignatureError, jwt.ImmatureSignatureError)):
                return "expired"
            if isinstance(cause, jwt.MissingRequiredClaimError):
                return "message"
            if "KID not found" in text or "ALG not found" in text:
                return "format"
            return "signature"
        return step

    def result(self) -> Launch:
        body: dict[str, Any] = dict(self._get_jwt_body())
        platform = self._tool_config.platform(self.get_iss(), self.get_client_id())
        assert platform is not None  # validate_registration found it
        message_type = str(body.get(CLAIM + "message_type"))
        if message_type not in ("LtiResourceLinkRequest", "LtiDeepLinkingRequest"):
            raise Refusal("unsupported", message_type)
        return Launch(body, platform, str(body.get(CLAIM + "deployment_id")), message_type)


def validate_launch(request: LaunchRequest, conf: ToolConf, expected_nonce: str) -> Launch:
    """pylti1p3's checks of one launch (blocking: JWKS fetch, RSA): the Launch, or Refusal."""
    launch = ToolLaunch(request, conf, StateSession(expected_nonce), Cookies(request))
    launch.validate()
    return launch.result()


def deep_linking_jwt(conf: ToolConf, platform: Platform, deployment_id: str, settings: dict[str, Any], *,
                     title: str, url: str, custom: dict[str, str]) -> str:
    """The signed LtiDeepLinkingResponse (pylti1p3 builds and signs it with our key; blocking: RSA)."""
    resource = (DeepLinkResource().set_title(title).set_url(url).set_custom_params(custom)
                .set_target("window"))
    link = DeepLink(conf.registration(platform), deployment_id, settings)  # type: ignore[arg-type]
    return str(link.get_response_jwt([resource]))
