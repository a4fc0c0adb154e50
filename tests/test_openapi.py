"""Issue 16, the OpenAPI contract: /api/openapi.json is a valid OpenAPI 3.1 document that names every route under
/api in the router (and nothing the router lacks), and real answers of the running app, for every documented
operation, validate against it: status documented, media type documented, JSON body valid against its schema.

When this fails with "undocumented", a route was added without its entry in web/openapi.py: add it there (the
section of its route module), with the schemas of what it answers.
"""

from __future__ import annotations

import base64
import io
import json
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from jsonschema import Draft202012Validator
from PIL import Image

from proctor.context import Context
from proctor.redis import THUMBNAIL_KEY
from proctor.settings import Settings
from proctor.store import events
from tests.support.accounts import logged_in, make_user, page_csrf
from tests.support.archive import recorded_session
from tests.support.media import face_canvas
from tests.support.servers import RunningApp, own_web_app
from web import openapi

# Operations whose success answer needs a whole live pipeline: their other documented answers are checked here,
# their success in the tests named.
SUCCESS_ELSEWHERE = {
    ("POST", "/api/sessions/{session_id}/offer"): "a WebRTC peer and a media node: tests/test_ingest_browser.py",
    ("POST", "/api/sessions/{session_id}/break"): "a connected candidate page: tests/test_accommodations.py",
}
VALID_LOOKING_SDP = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"
                     "a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n"
                     "a=fingerprint:sha-256 " + ":".join(["AB"] * 32) + "\r\n")


def _jpeg(rgb: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, format="JPEG", quality=90)
    return out.getvalue()


class Contract:
    """Calls the running app and checks each answer against the document; remembers what it checked."""

    def __init__(self, base: str, doc: dict[str, Any]) -> None:
        self.base, self.doc = base, doc
        self.seen: set[tuple[str, str, int]] = set()

    def schema_for(self, method: str, template: str, status: int) -> dict[str, Any]:
        operation = self.doc["paths"][template][method.lower()]
        answer = operation["responses"].get(str(status))
        assert answer is not None, f"{method} {template} answered {status}, which the document does not list"
        return dict(answer)

    def check(self, method: str, template: str, status: int, content_type: str, body: bytes) -> None:
        answer = self.schema_for(method, template, status)
        content = answer.get("content")
        if not content:
            assert status in (101, 204, 302), (method, template, status)
        else:
            assert content_type in content, f"{method} {template} {status}: {content_type} not in {list(content)}"
            if content_type == openapi.JSON:
                schema = {**content[content_type]["schema"], "components": self.doc["components"]}
                validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
                errors = sorted(validator.iter_errors(json.loads(body)), key=lambda e: list(e.path))
                assert not errors, (f"{method} {template} {status}: " +
                                    "; ".join(f"{list(e.path)}: {e.message}" for e in errors[:5]))
        self.seen.add((method, template, status))

    async def call(self, method: str, template: str, status: int, *, params: dict[str, Any] | None = None,
                   auth: str | None = None, http: aiohttp.ClientSession | None = None,
                   **kwargs: Any) -> Any:
        path = template.format(**(params or {}))
        headers = dict(kwargs.pop("headers", {}))
        if auth:
            headers["Authorization"] = f"Bearer {auth}"
        own = http is None
        client = http or aiohttp.ClientSession()
        try:
            async with client.request(method, self.base + path, headers=headers, allow_redirects=False,
                                      **kwargs) as response:
                body = await response.read()
                assert response.status == status, (method, path, response.status, body[:300])
                self.check(method, template, response.status, response.content_type, body)
                return json.loads(body) if response.content_type == openapi.JSON else body
        finally:
            if own:
                await client.close()


@pytest.fixture(scope="module")
async def doc(web_server: RunningApp, admin_token: str) -> dict[str, Any]:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {admin_token}"}) as http:
        async with http.get(f"{web_server.url}/api/openapi.json") as response:
            assert response.status == 200
            return dict(await response.json())


def test_every_api_route_is_documented_and_nothing_else(settings: Settings) -> None:
    from web.app import create_app

    app = create_app(settings)  # every route registered, whoever added it
    routes = openapi.api_routes(app)
    assert len(routes) > 30
    assert not openapi.undocumented(app), f"routes under /api missing from web/openapi.py: {openapi.undocumented(app)}"
    assert not openapi.unrouted(app), f"documented but not in the router: {openapi.unrouted(app)}"
    document = openapi.document(app)
    documented = {(m.upper(), p) for p, item in document["paths"].items() for m in item}
    assert documented == routes


def test_the_document_is_valid_openapi_3_1(settings: Settings) -> None:
    from openapi_spec_validator import validate

    from web.app import create_app

    document = openapi.document(create_app(settings))
    validate(document)  # the OpenAPI 3.1 meta-schema, $refs resolved
    ids = [op["operationId"] for item in document["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))
    for item in document["paths"].values():
        for operation in item.values():
            assert operation["security"], operation["operationId"]
            assert "401" in operation["responses"] and any(s.startswith("2") or s == "101"
                                                           for s in operation["responses"])
    # Every component schema is a valid JSON Schema (2020-12).
    for name, schema in document["components"]["schemas"].items():
        Draft202012Validator.check_schema({**schema, "components": document["components"]})
        assert name[0].isupper()


async def test_docs_page_lists_every_operation(web_server: RunningApp, ctx: Context, doc: dict[str, Any]) -> None:
    name = await make_user(ctx, "proctor")
    http = await logged_in(web_server.url, name)
    try:
        async with http.get(f"{web_server.url}/api/docs") as response:
            assert response.status == 200 and response.content_type == "text/html"
            page = await response.text()
    finally:
        await http.close()
    # Self-contained: nothing loads from another site, no script at all.
    assert "<script" not in page and not re.search(r'(src|href)="(https?:)?//', page)
    listed = set(re.findall(r'data-method="(\w+)" data-path="([^"]+)"', page))
    assert listed == {(m.upper(), p) for p, item in doc["paths"].items() for m in item}
    for schema in doc["components"]["schemas"]:
        assert f'id="schema-{schema}"' in page


@pytest.fixture(scope="module")
async def contract(web_server: RunningApp, doc: dict[str, Any]) -> Contract:
    return Contract(web_server.url, doc)


async def _session(c: Contract, token: str, **extra: Any) -> tuple[str, str]:
    body = await c.call("POST", "/api/sessions", 201, auth=token,
                        json={"candidate": "Ada <b>Lovelace</b>", "exam": "Contract", **extra})
    return body["id"], body["join_url"].rsplit("/", 1)[1]


async def _set_status(ctx: Context, sid: str, status: str) -> None:
    async with ctx.pool.acquire() as conn:
        await conn.execute("UPDATE sessions SET status = $2, started_at = CASE WHEN $2 <> 'created' THEN now() END, "
                           "ended_at = CASE WHEN $2 IN ('ended', 'finalized') THEN now() END WHERE id = $1",
                           sid, status)


@pytest.fixture(scope="module")
async def candidate_report_app(settings: Settings, ctx: Context) -> AsyncIterator[str]:
    async with own_web_app(settings, ctx, candidate_report_links=True) as base:
        yield base


async def test_real_answers_validate_against_the_document(
        contract: Contract, ctx: Context, admin_token: str, proctor_token: str, tmp_path: Path,
        web_server: RunningApp, candidate_report_app: str) -> None:
    c = contract
    nobody = str(uuid.uuid4())
    jpeg = _jpeg(face_canvas())

    # --- signaling: sessions ---
    sid, join = await _session(c, admin_token, accommodations={"breaks": {"count": 1, "minutes": 5}})
    other, other_join = await _session(c, proctor_token)
    await c.call("POST", "/api/sessions", 400, auth=admin_token, json={"candidate": ""})
    await c.call("POST", "/api/sessions", 401, json={"candidate": "a", "exam": "b"})
    listed = await c.call("GET", "/api/sessions", 200, auth=proctor_token)
    assert any(s["id"] == sid for s in listed)
    await _call_query(c, "/api/sessions", 400, proctor_token, {"status": "bogus"})
    await _call_query(c, "/api/sessions", 400, proctor_token, {"cursor": "forged.cursor"})
    await c.call("GET", "/api/sessions", 401)
    p = {"session_id": sid}
    await c.call("GET", "/api/sessions/{session_id}", 200, params=p, auth=proctor_token)
    await c.call("GET", "/api/sessions/{session_id}", 404, params={"session_id": nobody}, auth=proctor_token)
    await c.call("GET", "/api/sessions/{session_id}", 401, params=p)
    await c.call("GET", "/api/sessions/{session_id}/events", 200, params=p, auth=proctor_token)
    await c.call("GET", "/api/sessions/{session_id}/events", 404, params={"session_id": nobody}, auth=proctor_token)
    await c.call("PUT", "/api/sessions/{session_id}/accommodations", 200, params=p, auth=proctor_token,
                 json={"accommodations": {"detectors": {"looking_away": "off"}}})
    await c.call("PUT", "/api/sessions/{session_id}/accommodations", 400, params=p, auth=proctor_token,
                 json={"accommodations": {"detectors": {"sneezing": "off"}}})
    await c.call("POST", "/api/sessions/{session_id}/join-link", 200, params={"session_id": other},
                 auth=proctor_token)
    other_join = (await c.call("POST", "/api/sessions/{session_id}/join-link", 200, params={"session_id": other},
                               auth=proctor_token))["join_url"].rsplit("/", 1)[1]

    # --- candidate side, while the session is open ---
    await c.call("GET", "/api/sessions/{session_id}/state", 200, params=p, auth=join)
    await c.call("GET", "/api/sessions/{session_id}/state", 401, params=p)
    await c.call("GET", "/api/sessions/{session_id}/state", 403, params=p, auth=other_join)
    await c.call("POST", "/api/sessions/{session_id}/consent", 200, params=p, auth=join)
    form = aiohttp.FormData()
    form.add_field("photo", jpeg, filename="me.jpg", content_type="image/jpeg")
    await c.call("POST", "/api/sessions/{session_id}/precheck", 200, params=p, auth=join, data=form)
    bad = aiohttp.FormData()
    bad.add_field("photo", b"not an image", filename="x.jpg", content_type="image/jpeg")
    await c.call("POST", "/api/sessions/{session_id}/precheck", 415, params=p, auth=join, data=bad)
    await c.call("POST", "/api/sessions/{session_id}/precheck", 415, params=p, auth=join, data=b"x",
                 headers={"Content-Type": "text/plain"})
    form = aiohttp.FormData()
    form.add_field("photo", jpeg, filename="me.jpg", content_type="image/jpeg")
    await c.call("POST", "/api/sessions/{session_id}/reference", 201, params=p, auth=join, data=form)
    await c.call("POST", "/api/sessions/{session_id}/break", 400, params=p, auth=join, json={"action": "nap"})
    await c.call("POST", "/api/sessions/{session_id}/break", 409, params=p, auth=join, json={"action": "start"})
    await c.call("POST", "/api/sessions/{session_id}/offer", 400, params=p, auth=join,
                 json={"sdp": "hello", "type": "offer"})
    await c.call("POST", "/api/sessions/{session_id}/offer", 401, params=p, json={"sdp": "v=0", "type": "offer"})

    # --- live: the monitor's socket, interventions ---
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{c.base}/api/live", headers={"Authorization": f"Bearer {proctor_token}"}) as ws:
            assert (await ws.receive_json(timeout=10))["type"] == "hello"
        c.seen.add(("GET", "/api/live", 101))
    await c.call("GET", "/api/live", 401)
    await c.call("POST", "/api/sessions/{session_id}/intervene", 400, params=p, auth=proctor_token,
                 json={"action": "dance"})
    await c.call("POST", "/api/sessions/{session_id}/intervene", 409, params=p, auth=proctor_token,
                 json={"action": "pause", "text": "a moment please"})
    await _set_status(ctx, sid, "live")
    await c.call("POST", "/api/sessions/{session_id}/intervene", 200, params=p, auth=proctor_token,
                 json={"action": "pause", "text": "a moment please"})
    await c.call("POST", "/api/sessions/{session_id}/intervene", 200, params=p, auth=proctor_token,
                 json={"action": "resume"})
    await c.call("PUT", "/api/sessions/{session_id}/accommodations", 409, params=p, auth=proctor_token,
                 json={"accommodations": {}})

    # --- media ---
    await c.call("GET", "/api/sessions/{session_id}/thumbnail", 404, params=p, auth=proctor_token)
    await ctx.redis.set(THUMBNAIL_KEY.format(session_id=sid), base64.b64encode(jpeg), ex=60)
    await c.call("GET", "/api/sessions/{session_id}/thumbnail", 200, params=p, auth=proctor_token)
    async with ctx.pool.acquire() as conn:
        flag = await events.insert(conn, sid, "phone", 1.0, 2.5, 0.8, {})
        snap = f"sessions/{sid}/snapshots/{flag}.jpg"
        await ctx.storage.put_bytes(snap, jpeg, "image/jpeg")
        await conn.execute("UPDATE events SET snapshot_key = $2 WHERE id = $1", flag, snap)
        no_snapshot = await events.insert(conn, sid, "no_face", 3.0, None, 0.9, {})
    e = {"session_id": sid, "event_id": flag}
    await c.call("GET", "/api/sessions/{session_id}/events/{event_id}/snapshot", 200, params=e, auth=proctor_token)
    await c.call("GET", "/api/sessions/{session_id}/events/{event_id}/snapshot", 404, auth=proctor_token,
                 params={"session_id": sid, "event_id": no_snapshot})
    await c.call("GET", "/api/sessions/{session_id}/master", 404, params=p, auth=proctor_token)
    await c.call("GET", "/api/sessions/{session_id}/screen", 404, params=p, auth=proctor_token)  # none shared

    # --- review and cases ---
    await c.call("POST", "/api/sessions/{session_id}/events/{event_id}/ack", 200, params=e, auth=proctor_token)
    await c.call("POST", "/api/sessions/{session_id}/events/{event_id}/ack", 404, auth=proctor_token,
                 params={"session_id": sid, "event_id": 2**40})
    await c.call("POST", "/api/sessions/{session_id}/events/{event_id}/review", 200, params=e, auth=proctor_token,
                 json={"state": "confirmed", "note": "phone in the left hand"})
    await c.call("POST", "/api/sessions/{session_id}/events/{event_id}/review", 400, params=e, auth=proctor_token,
                 json={"state": "guilty"})
    await c.call("GET", "/api/sessions/{session_id}/case", 200, params=p, auth=proctor_token)
    await c.call("POST", "/api/sessions/{session_id}/case", 409, params=p, auth=proctor_token,
                 json={"action": "start"})
    await c.call("POST", "/api/sessions/{session_id}/end", 202, params=p, auth=proctor_token)
    await c.call("POST", "/api/sessions/{session_id}/end", 404, params={"session_id": nobody}, auth=proctor_token)
    await c.call("POST", "/api/sessions/{session_id}/case", 200, params=p, auth=proctor_token,
                 json={"action": "start"})
    await c.call("POST", "/api/sessions/{session_id}/case", 400, params=p, auth=proctor_token,
                 json={"action": "convict"})
    await c.call("POST", "/api/sessions/{session_id}/case", 200, params=p, auth=proctor_token,
                 json={"action": "decide", "decision": "cleared", "rationale": "The phone was the allowed timer."})
    await c.call("POST", "/api/sessions/{session_id}/case", 403, params=p, auth=proctor_token,
                 json={"action": "reopen", "reason": "a second look"})
    await c.call("GET", "/api/cases/queue", 200, auth=proctor_token)
    await c.call("GET", "/api/sessions/{session_id}/events.{fmt}", 200, auth=proctor_token,
                 params={"session_id": sid, "fmt": "json"})
    await c.call("GET", "/api/sessions/{session_id}/events.{fmt}", 200, auth=proctor_token,
                 params={"session_id": sid, "fmt": "csv"})
    await c.call("GET", "/api/sessions/{session_id}/events.{fmt}", 404, auth=proctor_token,
                 params={"session_id": nobody, "fmt": "csv"})
    await c.call("GET", "/api/sessions/{session_id}/preview", 200, params=p, auth=proctor_token)
    await c.call("POST", "/api/sessions/{session_id}/join-link", 409, params=p, auth=proctor_token)
    await c.call("GET", "/api/sessions/{session_id}/state", 200, params=p, auth=join)
    await c.call("POST", "/api/sessions/{session_id}/consent", 409, params=p, auth=join)
    await c.call("POST", "/api/sessions/{session_id}/offer", 409, params=p, auth=join,
                 json={"sdp": VALID_LOOKING_SDP, "type": "offer"})

    # --- stored video: segments, batches, the master ---
    recorded, _ = await recorded_session(ctx, tmp_path, 2, "ended")
    r = {"session_id": recorded, "idx": 0}
    await c.call("GET", "/api/sessions/{session_id}/segments/{idx}", 200, params=r, auth=proctor_token)
    await c.call("GET", "/api/sessions/{session_id}/segments/{idx}", 404, params={**r, "idx": 7}, auth=proctor_token)
    await c.call("GET", "/api/sessions/{session_id}/batches/{idx}", 404, params=r, auth=proctor_token)
    async with ctx.pool.acquire() as conn:
        key = await conn.fetchval("SELECT storage_key FROM segments WHERE session_id = $1 AND idx = 0", recorded)
        await conn.execute("INSERT INTO batches (session_id, first_idx, last_idx, start_s, end_s, bytes, sha256, "
                           "storage_key) VALUES ($1, 0, 0, 0, 2, 1, 'x', $2)", recorded, key)
        await conn.execute("INSERT INTO master_videos (session_id, storage_key, bytes, sha256, duration_s) "
                           "VALUES ($1, $2, 1, 'x', 2)", recorded, key)
        await conn.execute("INSERT INTO screen_masters (session_id, storage_key, bytes, sha256, start_s, duration_s) "
                           "VALUES ($1, $2, 1, 'x', 0, 2)", recorded, key)
    await c.call("GET", "/api/sessions/{session_id}/batches/{idx}", 200, params=r, auth=proctor_token)
    await c.call("GET", "/api/sessions/{session_id}/master", 200, params={"session_id": recorded},
                 auth=proctor_token)
    await c.call("GET", "/api/sessions/{session_id}/screen", 200, params={"session_id": recorded},
                 auth=proctor_token)
    await c.call("GET", "/api/sessions/{session_id}/preview", 200, params={"session_id": recorded},
                 auth=proctor_token)

    # --- the evidence report ---
    await c.call("GET", "/api/sessions/{session_id}/report.pdf", 200, params=p, auth=proctor_token)
    await c.call("GET", "/api/sessions/{session_id}/report.pdf", 404, params={"session_id": nobody},
                 auth=proctor_token)
    await c.call("POST", "/api/sessions/{session_id}/report-link", 403, params=p, auth=proctor_token)
    links = Contract(candidate_report_app, c.doc)
    await links.call("POST", "/api/sessions/{session_id}/report-link", 200, params=p, auth=proctor_token)
    await links.call("POST", "/api/sessions/{session_id}/report-link", 409, params={"session_id": other},
                     auth=proctor_token)
    c.seen |= links.seen

    # --- deleting (admins) ---
    await c.call("DELETE", "/api/sessions/{session_id}", 403, params={"session_id": other}, auth=proctor_token)
    await c.call("DELETE", "/api/sessions/{session_id}", 200, params={"session_id": other}, auth=admin_token)
    await c.call("DELETE", "/api/sessions/{session_id}", 404, params={"session_id": other}, auth=admin_token)

    # --- webhooks (admins) ---
    if "/api/webhooks" in c.doc["paths"]:
        await _webhooks(c, ctx, admin_token, proctor_token)

    # --- this document, with a login cookie (and its CSRF token, for the record) ---
    http = await logged_in(c.base, await make_user(ctx, "proctor"))
    try:
        async with http.get(f"{c.base}/live") as response:
            page_csrf(await response.text())
        await c.call("GET", "/api/openapi.json", 200, http=http)
        await c.call("GET", "/api/docs", 200, http=http)
    finally:
        await http.close()
    await c.call("GET", "/api/openapi.json", 401)
    await c.call("GET", "/api/docs", 401)

    # Every documented operation was answered and checked, with its success status (but the two named above).
    operations = {(m.upper(), path) for path, item in c.doc["paths"].items() for m in item}
    answered = {(m, path) for m, path, _ in c.seen}
    assert operations - answered == set(), f"never called: {operations - answered}"
    missing = []
    for path, item in c.doc["paths"].items():
        for method, operation in item.items():
            success = next(s for s in operation["responses"] if s.startswith("2") or s == "101")
            if (method.upper(), path, int(success)) not in c.seen and (method.upper(), path) not in SUCCESS_ELSEWHERE:
                missing.append(f"{method.upper()} {path} {success}")
    assert not missing, f"success answers never checked: {missing}"
    print(f"{len(c.seen)} (operation, status) answers validated over {len(operations)} operations")


async def _call_query(c: Contract, template: str, status: int, token: str, query: dict[str, str]) -> Any:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
        async with http.get(c.base + template, params=query) as response:
            body = await response.read()
            assert response.status == status, body
            c.check("GET", template, status, response.content_type, body)
            return json.loads(body)


async def _webhooks(c: Contract, ctx: Context, admin: str, proctor: str) -> None:
    created = await c.call("POST", "/api/webhooks", 201, auth=admin,
                           json={"url": "https://hooks.example.org/proctor", "event_types": ["flag.raised"],
                                 "description": "contract test"})
    await c.call("POST", "/api/webhooks", 400, auth=admin, json={"url": "ftp://x", "event_types": ["flag.raised"]})
    await c.call("GET", "/api/webhooks", 403, auth=proctor)
    hook = {"webhook_id": created["id"]}
    listed = await c.call("GET", "/api/webhooks", 200, auth=admin)
    assert all("secret" not in h for h in listed)
    await c.call("GET", "/api/webhooks/{webhook_id}", 200, params=hook, auth=admin)
    await c.call("GET", "/api/webhooks/{webhook_id}", 404, params={"webhook_id": 2**40}, auth=admin)
    await c.call("PATCH", "/api/webhooks/{webhook_id}", 200, params=hook, auth=admin, json={"enabled": False})
    await c.call("PATCH", "/api/webhooks/{webhook_id}", 400, params=hook, auth=admin, json={"enabled": "yes"})
    await c.call("POST", "/api/webhooks/{webhook_id}/test", 202, params=hook, auth=admin)
    deliveries = await c.call("GET", "/api/webhooks/deliveries", 200, auth=admin)
    await _call_query(c, "/api/webhooks/deliveries", 400, admin, {"state": "lost"})
    await c.call("GET", "/api/webhooks/{webhook_id}/deliveries", 200, params=hook, auth=admin)
    mine = [d for d in deliveries["deliveries"] if d["endpoint_id"] == created["id"]]
    d = {"delivery_id": mine[0]["id"]} if mine else {"delivery_id": 2**40}
    if mine:  # pending (no worker runs here), not failed: a resend is refused
        await c.call("POST", "/api/webhooks/deliveries/{delivery_id}/resend", 409, params=d, auth=admin)
        async with ctx.pool.acquire() as conn:  # as the worker leaves a delivery that ran out of attempts
            await conn.execute("UPDATE webhook_deliveries SET state = 'failed' WHERE id = $1", d["delivery_id"])
        await c.call("POST", "/api/webhooks/deliveries/{delivery_id}/resend", 202, params=d, auth=admin)
    await c.call("POST", "/api/webhooks/deliveries/{delivery_id}/resend", 404, params={"delivery_id": 2**40},
                 auth=admin)
    await c.call("DELETE", "/api/webhooks/{webhook_id}", 204, params=hook, auth=admin)
    await c.call("DELETE", "/api/webhooks/{webhook_id}", 404, params=hook, auth=admin)
