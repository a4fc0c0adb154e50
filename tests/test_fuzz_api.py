"""Bad input never gets a 500: random bodies, ids, tokens and methods against every API route of the app."""

from __future__ import annotations

import json
import re
from urllib.parse import quote

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.servers import RunningApp

ID_CHARS = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60)
BODIES = st.one_of(
    st.binary(max_size=2000),
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
                 lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
                 max_leaves=20).map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"sdp": st.text(max_size=300).map(lambda s: "v=0\r\n" + s), "type": st.just("offer")})
    .map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"candidate": st.text(max_size=300), "exam": st.text(max_size=30)})
    .map(lambda v: json.dumps(v).encode()),
)


def _api_routes() -> list[tuple[str, str]]:
    from proctor.settings import Settings
    from web.app import create_app

    app = create_app(Settings.from_env({}, env_file=None))
    routes = []
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        if path and path.startswith("/api/") and route.method != "HEAD":
            routes.append((route.method, path))
    return sorted(set(routes))


ROUTES = _api_routes()


@pytest.mark.slow
@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(route=st.sampled_from(ROUTES), ident=ID_CHARS, body=BODIES, token=st.sampled_from(["admin", "join", "junk",
                                                                                          "none"]),
       content_type=st.sampled_from(["application/json", "multipart/form-data; boundary=x", "text/plain"]))
async def test_api_never_answers_500(web_server: RunningApp, admin_token: str, route: tuple[str, str], ident: str,
                                     body: bytes, token: str, content_type: str) -> None:
    method, path = route
    url_path = re.sub(r"\{[^}]+\}", lambda _m: quote(ident, safe="") or "x", path)
    headers = {"Content-Type": content_type}
    if token == "admin":
        headers["Authorization"] = f"Bearer {admin_token}"
    elif token == "join":
        headers["Authorization"] = "Bearer eyJzIjoiMSJ9.c2ln"
    elif token == "junk":
        headers["Authorization"] = "Bearer pt_" + quote(ident[:20], safe="")
    if method == "GET" and path == "/api/live":
        return  # the WebSocket route is covered by its own tests
    async with aiohttp.ClientSession() as http, http.request(method, web_server.url + url_path, data=body,
                                                             headers=headers) as response:
        text = await response.text()
        assert response.status < 500, (method, url_path, response.status, text[:300])
