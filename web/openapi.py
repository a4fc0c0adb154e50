"""The REST contract as an OpenAPI 3.1 document (GET /api/openapi.json) and a page that reads it (GET /api/docs).

The document is built from the router: each route under /api is looked up here by its method and path, grouped
below as the route modules group them (one section per module, in the order of web/app.py). A route added without
its entry here is left out of the document and `undocumented()` names it; tests/test_openapi.py fails on it, and
checks that real answers of the running app validate against these schemas. Schemas say what the handlers build
(proctor/store/*.to_json and the json_response calls); extra properties are allowed, so adding a field is not a
break, and a field's removal or change of type is caught by the test.

Both routes need a login or an API token, as /healthz's detail does: the document maps the deployment.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from markupsafe import Markup, escape

from core.sessions import STATUSES
from proctor.http import CTX, require_user
from proctor.store.webhooks import EVENT_TYPES as WEBHOOK_EVENTS
from proctor.store.webhooks import STATES as WEBHOOK_STATES
from web.login import render_page

TITLE = "Proctor REST API"
VERSION = "1.0.0"
JSON = "application/json"
_PARAM = re.compile(r"\{(\w+)(?::[^}]*)?\}")


def ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(kind: str, **extra: Any) -> dict[str, Any]:
    return {"type": [kind, "null"], **extra}


def obj(required: dict[str, Any], optional: dict[str, Any] | None = None, *, closed: bool = False,
        description: str | None = None) -> dict[str, Any]:
    """An object schema: `required` properties must be present (each may still be null where its schema says)."""
    schema: dict[str, Any] = {"type": "object", "properties": {**required, **(optional or {})},
                              "required": list(required)}
    if closed:
        schema["additionalProperties"] = False
    if description:
        schema["description"] = description
    return schema


def array(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": items}


TIME = nullable("string", format="date-time")
UUID = {"type": "string", "format": "uuid"}

SCHEMAS: dict[str, Any] = {
    "Error": obj({"error": {"type": "string", "description": "what is wrong, for people"}},
                 description="Every 4xx/5xx answer with a JSON body; some add fields (e.g. `status`, `case`)."),
    "Sensitivity": obj({"profile": {"enum": ["strict", "standard", "lenient"]}},
                       {"timing": {"type": "object"}, "thresholds": {"type": "object"}},
                       description="How quickly a condition becomes a flag. In a request also a profile name."),
    "Accommodations": {
        "type": "object", "description": "Per-candidate detector changes and breaks (README, Accommodations).",
        "properties": {
            "detectors": {"type": "object", "additionalProperties": {
                "oneOf": [{"const": "off"}, obj({}, {"min_duration_s": {"type": "number", "minimum": 0,
                                                                      "maximum": 600},
                                                     "weight": {"type": "number", "minimum": 0, "maximum": 100}})]}},
            "breaks": obj({"count": {"type": "integer", "minimum": 0, "maximum": 10},
                           "minutes": {"type": "integer", "minimum": 1, "maximum": 60}}),
            "note": {"type": "string", "maxLength": 500}}},
    "Session": obj({
        "id": UUID, "candidate": {"type": "string"}, "exam": {"type": "string"},
        "status": {"enum": list(STATUSES)}, "created_at": TIME, "started_at": TIME, "ended_at": TIME,
        "end_reason": nullable("string"), "duration_s": nullable("number"), "media_gaps": {},
        "connections": nullable("integer"), "node_id": nullable("string"), "score": {"type": "number"},
        "failure_reason": nullable("string"), "sensitivity": {"type": ["object", "null"]},
        "accommodations": {"type": ["object", "null"]}}),
    "SessionWithLink": {"allOf": [ref("Session"), obj({"join_url": {"type": "string", "format": "uri"}})]},
    "Segment": obj({"idx": {"type": "integer"}, "start_s": {"type": "number"}, "end_s": nullable("number"),
                    "frames": nullable("integer"), "bytes": nullable("integer"), "state": {"type": "string"}}),
    "Event": obj({
        "id": {"type": "integer"}, "session_id": UUID, "kind": {"type": "string"},
        "start_s": {"type": "number", "description": "on the session media timeline (= master video time)"},
        "end_s": nullable("number"), "duration_s": nullable("number"), "confidence": nullable("number"),
        "details": {}, "source": nullable("string"), "review_state": {"type": "string"},
        "review_note": nullable("string"), "reviewed_by": nullable("string"), "reviewed_at": TIME,
        "acknowledged_by": nullable("string"), "acknowledged_at": TIME, "snapshot_url": nullable("string")}),
    "SessionDetail": {"allOf": [ref("Session"), obj({
        "segments": array(ref("Segment")), "events": array(ref("Event")),
        "master_video_url": nullable("string")})]},
    "NewSession": obj({"candidate": {"type": "string", "minLength": 1, "maxLength": 200},
                       "exam": {"type": "string", "minLength": 1, "maxLength": 200}},
                      {"sensitivity": {"oneOf": [{"enum": ["strict", "standard", "lenient"]}, ref("Sensitivity"),
                                                 {"type": "null"}]},
                       "accommodations": {"oneOf": [ref("Accommodations"), {"type": "null"}]}}),
    "CaseHistoryEntry": obj({"at": TIME, "actor": {"type": "string"}, "action": {"type": "string"},
                             "from_status": nullable("string"), "to_status": nullable("string"),
                             "assignee": nullable("string"), "note": nullable("string")}),
    "Case": obj({"session_id": {"type": "string"},
                 "status": {"enum": ["unreviewed", "in_review", "cleared", "concern_raised"]},
                 "label": {"type": "string"}, "assignee": nullable("string"), "rationale": nullable("string"),
                 "decided_by": nullable("string"), "decided_at": TIME, "version": {"type": "integer"},
                 "updated_at": TIME, "history": array(ref("CaseHistoryEntry"))}),
    "CaseChange": obj({"action": {"enum": ["assign", "start", "decide", "reopen", "comment"]}},
                      {"assignee": nullable("string"), "decision": {"enum": ["cleared", "concern_raised"]},
                       "rationale": {"type": "string", "minLength": 10}, "reason": {"type": "string"},
                       "note": {"type": "string"}, "version": {"type": "integer"}}),
    "QueueItem": obj({"id": UUID, "candidate": {"type": "string"}, "exam": {"type": "string"},
                      "status": {"type": "string"}, "score": {"type": "number"}, "flags": {"type": "integer"},
                      "pending": {"type": "integer"}, "ended_at": TIME}),
    "Review": obj({"state": {"enum": ["pending", "confirmed", "dismissed"]}},
                  {"note": nullable("string", maxLength=2000)}),
    "ReviewedEvent": {"allOf": [ref("Event"), obj({"session_score": {"type": "number"}})]},
    "Export": obj({"session": ref("Session"), "events": array(ref("Event"))}),
    "PreviewPiece": obj({"kind": {"enum": ["batch", "segment"]}, "idx": {"type": "integer"},
                         "start_s": {"type": "number"}, "end_s": nullable("number"),
                         "segments": {"type": "integer"}, "url": {"type": "string"}}),
    "Preview": obj({"status": {"enum": list(STATUSES)}, "score": {"type": "number"}, "master": {"type": "boolean"},
                    "pieces": array(ref("PreviewPiece"))}),
    "CandidateState": obj({"status": {"enum": list(STATUSES)}, "consented": {"type": "boolean"},
                           "has_reference": {"type": "boolean"}, "duration_s": nullable("number"),
                           "breaks": obj({"allowed": {"type": "integer"}, "minutes": {"type": "integer"},
                                          "taken": {"type": "integer"}}),
                           "hold": {"oneOf": [{"type": "null"}, obj({"hold": {"enum": ["paused", "break"]},
                                                                     "id": {"type": "integer"}})]}}),
    "Offer": obj({"sdp": {"type": "string", "description": "an SDP offer with video, starting with v=0"},
                  "type": {"const": "offer"}}),
    "Answer": obj({"sdp": {"type": "string"}, "type": {"const": "answer"}}, {"node": {"type": "string"}}),
    "Precheck": obj({"ok": {"type": "boolean"}, "faces": {"type": "integer"}, "brightness": {"type": "number"},
                     "face_fraction": {"type": "number"}, "message": {"type": "string"}}),
    "Photo": obj({"photo": {"type": "string", "contentMediaType": "image/jpeg",
                            "description": "JPEG, PNG or WebP"}}),
    "Reference": obj({"id": {"type": "integer"}, "faces": {"type": "integer"}, "brightness": {"type": "number"}},
                     {"event_id": {"type": "integer", "description": "staff replacement: its timeline event"}}),
    "Break": obj({"action": {"enum": ["start", "end"]}}),
    "BreakResult": obj({"event_id": nullable("integer"), "taken": {"type": "integer"},
                        "allowed": {"type": "integer"}, "minutes": {"type": "integer"}}),
    "Intervention": obj({"action": {"enum": ["message", "adjust", "pause", "resume", "end"]}},
                        {"text": {"type": "string", "maxLength": 300}, "preset": {"type": "string"}}),
    "InterventionResult": obj({"event_id": nullable("integer"), "action": {"type": "string"},
                               "state": {"type": "string"}, "delivered": {"type": "boolean"},
                               "media_time_s": nullable("number")}),
    "ReportLink": obj({"url": {"type": "string", "format": "uri"}, "expires_at": {"type": "string",
                                                                                   "format": "date-time"}}),
    "Deleted": obj({"id": UUID, "deleted": {"const": True}}),
    "WebhookEndpoint": obj({"id": {"type": "integer"}, "url": {"type": "string", "format": "uri"},
                            "event_types": array({"type": "string"}), "description": {"type": "string"},
                            "enabled": {"type": "boolean"}, "created_by": nullable("string"),
                            "created_at": TIME, "updated_at": TIME},
                           {"deliveries": obj({"pending": {"type": "integer"}, "failed": {"type": "integer"}}),
                            "secret": {"type": "string", "description": "only when created or rotated"}}),
    "WebhookInput": obj({}, {"url": {"type": "string", "format": "uri"},
                             "event_types": array({"enum": list(WEBHOOK_EVENTS)}),
                             "description": {"type": "string"}, "enabled": {"type": "boolean"},
                             "secret": {"type": "string"}, "rotate_secret": {"type": "boolean"}},
                        description="POST needs url and event_types; PATCH any of them (rotate_secret: PATCH only)."),
    "WebhookDelivery": obj({"id": {"type": "integer"}, "event_id": {"type": "string"}, "type": {"type": "string"},
                            "endpoint_id": nullable("integer"), "url": nullable("string"),
                            "session_id": nullable("string"), "state": {"enum": list(WEBHOOK_STATES)},
                            "attempts": {"type": "integer"}, "last_status": nullable("integer"),
                            "last_error": nullable("string"), "last_attempt_at": TIME, "next_attempt_at": TIME,
                            "delivered_at": TIME, "created_at": TIME}),
    "WebhookDeliveries": obj({"deliveries": array(ref("WebhookDelivery")),
                              "next_before": nullable("integer", description="pass as ?before= for older ones")}),
    "WebhookTest": obj({"event_id": {}}),
    "Resent": obj({"id": {"type": "integer"}, "state": {"const": "pending"}}),
    "Ok": obj({"ok": {"const": True}}),
    "OpenApi": obj({"openapi": {"type": "string"}, "paths": {"type": "object"}}),
}

SECURITY_SCHEMES = {
    "apiToken": {"type": "http", "scheme": "bearer", "bearerFormat": "pt_…",
                 "description": "An API token (`proctor token create NAME`, or Users → New token): "
                                "`Authorization: Bearer pt_…`. Acts as its user with that user's role."},
    "staffCookie": {"type": "apiKey", "in": "cookie", "name": "proctor_session",
                    "description": "The login cookie a browser gets from POST /login."},
    "csrf": {"type": "apiKey", "in": "header", "name": "X-CSRF-Token",
             "description": "With the login cookie, every POST/PUT/DELETE carries the page's CSRF token "
                          "(the `csrf-token` meta tag of any staff page). Not needed with an API token."},
    "joinToken": {"type": "http", "scheme": "bearer", "bearerFormat": "join token",
                  "description": "The candidate's join token: the last part of the join_url."},
}


@dataclass(frozen=True)
class Op:
    """One documented operation. `auth`: staff (login or API token, either role), admin, candidate (join token),
    either (staff or candidate). `ok`: the success status and its body: a schema (JSON), or a media type."""

    method: str
    path: str
    summary: str
    auth: str
    ok: tuple[int, Any]
    body: Any = None  # a schema (JSON), or ("multipart/form-data", schema)
    query: tuple[tuple[str, dict[str, Any], str], ...] = ()
    errors: dict[int, str] = field(default_factory=dict)
    description: str = ""
    headers: dict[str, str] = field(default_factory=dict)  # response headers of the success answer


def _ops_signaling() -> list[Op]:
    """signaling/api.py: sessions (staff) and the candidate side of signaling."""
    sid = "/api/sessions/{session_id}"
    return [
        Op("POST", "/api/sessions", "Create a session and its join link", "staff", (201, ref("SessionWithLink")),
           body=ref("NewSession"), errors={400: "a field is missing or wrong (the reason says which)"}),
        Op("GET", "/api/sessions", "List sessions, a page at a time", "staff", (200, array(ref("Session"))),
           query=(("status", {"enum": list(STATUSES)}, "only sessions in this status"),
                  ("q", {"type": "string", "maxLength": 200}, "candidate or exam contains this text (literally)"),
                  ("sort", {"enum": ["newest", "score"], "default": "newest"}, "the order"),
                  ("limit", {"type": "integer", "minimum": 1, "maximum": 500, "default": 100}, "page size"),
                  ("cursor", {"type": "string"}, "the X-Next-Cursor (or a Link) of the page before")),
           errors={400: "a wrong filter, sort or limit, or a cursor this server did not issue for this sort"},
           headers={"Link": 'the next and previous pages: <url>; rel="next", <url>; rel="prev"',
                    "X-Next-Cursor": "the cursor of the next page (absent on the last)"},
           description="Keyset pagination: pages never skip or repeat a session, even while sessions are "
                       "created; pass the same filters with the cursor."),
        Op("GET", sid, "A session with its segments and events", "staff", (200, ref("SessionDetail")),
           errors={404: "no such session"}),
        Op("DELETE", sid, "Delete a session's video, snapshots and events", "admin", (200, ref("Deleted")),
           errors={404: "no such session"}),
        Op("GET", f"{sid}/events", "A session's events (flags and timeline entries)", "staff",
           (200, array(ref("Event"))), errors={404: "no such session"}),
        Op("POST", f"{sid}/end", "End a session (staff, or the candidate with the join token)", "either",
           (202, ref("Session")), errors={403: "join token of another session", 404: "no such session"}),
        Op("POST", f"{sid}/join-link", "A new join link; the earlier ones stop working", "staff",
           (200, ref("SessionWithLink")), errors={404: "no such session", 409: "the session is no longer open"}),
        Op("PUT", f"{sid}/accommodations", "Replace the candidate's accommodations (before the exam)", "staff",
           (200, ref("Session")), body=obj({"accommodations": ref("Accommodations")}),
           errors={400: "a wrong value (the reason says which)", 404: "no such session",
                   409: "the session is live or over"}),
        Op("GET", f"{sid}/state", "What a (re)loaded candidate page needs to resume", "candidate",
           (200, ref("CandidateState")), errors={403: "join token of another session"}),
        Op("POST", f"{sid}/consent", "The candidate accepts the recording notice", "candidate", (200, ref("Ok")),
           errors={403: "join token of another session", 409: "the session is over"}),
        Op("POST", f"{sid}/offer", "Relay the candidate's SDP offer to a media node; its answer", "candidate",
           (200, ref("Answer")), body=ref("Offer"),
           errors={400: "not an acceptable offer", 403: "join token of another session",
                   409: "the session is over, or another offer is being answered", 413: "offer too large",
                   429: "too many offers for this session",
                   503: "no media node has room (busy by measured load, full, or none running): retry after "
                        "Retry-After"}),
    ]


def _ops_candidate() -> list[Op]:
    """web/candidate.py: the photo checks and breaks of the join page."""
    sid = "/api/sessions/{session_id}"
    photo = ("multipart/form-data", ref("Photo"))
    return [
        Op("POST", f"{sid}/precheck", "Check a camera photo (faces, light) without keeping it", "candidate",
           (200, ref("Precheck")), body=photo,
           errors={400: "no photo field", 413: "photo too large", 415: "not a JPEG, PNG or WebP image"}),
        Op("POST", f"{sid}/reference", "Set the identity reference photo (candidate) or replace it (staff)",
           "either", (201, ref("Reference")), body=photo,
           errors={400: "no photo field", 409: "the exam has started, or too many photos", 413: "photo too large",
                   415: "not a JPEG, PNG or WebP image", 422: "no usable face in the photo"}),
        Op("POST", f"{sid}/break", "Start or end one of the breaks the accommodations allow", "candidate",
           (200, ref("BreakResult")), body=ref("Break"),
           errors={400: "action must be start or end", 409: "no break allowed now, or the page is not connected"}),
    ]


def _ops_media() -> list[Op]:
    """web/media.py: video and pictures for staff."""
    sid = "/api/sessions/{session_id}"
    return [
        Op("GET", f"{sid}/thumbnail", "The latest small frame of a live stream", "staff", (200, "image/jpeg"),
           errors={404: "the stream is not live"}),
        Op("GET", f"{sid}/master", "The master video (Range requests; 302 to a presigned URL on S3/R2)", "staff",
           (200, "video/webm"), errors={302: "redirect to a short-lived presigned URL", 404: "no master video yet"}),
        Op("GET", f"{sid}/screen", "The shared screen's master video, on the same session timeline as the webcam's "
           "(Range requests; 302 to a presigned URL on S3/R2)", "staff", (200, "video/webm"),
           errors={302: "redirect to a short-lived presigned URL",
                   404: "no screen recording (none shared, or not finalized yet)"}),
        Op("GET", f"{sid}/events/{{event_id}}/snapshot", "An event's evidence snapshot", "staff",
           (200, "image/jpeg"), errors={404: "no snapshot for this event"}),
    ]


def _ops_staff() -> list[Op]:
    """web/staff.py: review, cases, exports, the preview of a session whose master is not built yet."""
    sid = "/api/sessions/{session_id}"
    event = f"{sid}/events/{{event_id}}"
    return [
        Op("GET", "/api/cases/queue", "Ended sessions nobody has started reviewing, highest score first", "staff",
           (200, array(ref("QueueItem")))),
        Op("GET", f"{sid}/case", "The case (review decision) of a session, with its history", "staff",
           (200, ref("Case")), errors={404: "no such session"}),
        Op("POST", f"{sid}/case", "Change the case: start, assign, decide, reopen (admins), comment", "staff",
           (200, ref("Case")), body=ref("CaseChange"),
           errors={400: "a wrong change (the reason says what)", 403: "reopen needs an admin",
                   404: "no such session", 409: "the exam has not ended, the case is decided, or it changed "
                                                "since `version`"}),
        Op("POST", f"{event}/review", "Confirm or dismiss a flag (or reset it to needs review)", "staff",
           (200, ref("ReviewedEvent")), body=ref("Review"),
           errors={400: "wrong state or note", 404: "no such flag"}),
        Op("POST", f"{event}/ack", "Acknowledge a live alert", "staff", (200, ref("Event")),
           errors={404: "no such event"}),
        Op("GET", f"{sid}/events.{{fmt}}", "Every event with its review, as a CSV or JSON download", "staff",
           (200, ref("Export")), errors={404: "no such session"},
           description="`fmt` is csv (text/csv, one row per event) or json (the schema here)."),
        Op("GET", f"{sid}/preview", "The stored pieces of a session whose master is not built yet", "staff",
           (200, ref("Preview")), errors={404: "no such session"}),
        Op("GET", f"{sid}/segments/{{idx}}", "One stored 20-s segment", "staff", (200, "video/webm"),
           errors={302: "redirect to a short-lived presigned URL", 404: "not stored (yet, or any more)"}),
        Op("GET", f"{sid}/batches/{{idx}}", "One stored batch of merged segments", "staff", (200, "video/webm"),
           errors={302: "redirect to a short-lived presigned URL", 404: "not stored (yet, or any more)"}),
    ]


def _ops_report() -> list[Op]:
    """web/report.py: the evidence report."""
    sid = "/api/sessions/{session_id}"
    return [
        Op("GET", f"{sid}/report.pdf", "The evidence report (PDF)", "staff", (200, "application/pdf"),
           errors={404: "no such session"}),
        Op("POST", f"{sid}/report-link", "A signed, expiring report link for the candidate", "staff",
           (200, ref("ReportLink")),
           errors={403: "links are turned off (CANDIDATE_REPORT_LINKS)", 404: "no such session",
                   409: "the exam has not ended"}),
    ]


def _ops_live() -> list[Op]:
    """web/live.py: the live monitor's WebSocket and interventions."""
    return [
        Op("GET", "/api/live", "The live monitor: a WebSocket of JSON messages", "staff",
           (101, None), errors={403: "cross-origin WebSocket", 429: "too many live sockets for this user"},
           description="Upgrade to a WebSocket. The first message is {\"type\": \"hello\", \"user\", \"role\"}; "
                       "then one JSON message per event start/end, session state change, acknowledgement and "
                       "intervention. Send \"ping\" for {\"type\": \"pong\"}."),
        Op("POST", "/api/sessions/{session_id}/intervene", "Message, adjust, pause, resume or end a live exam",
           "staff", (200, ref("InterventionResult")), body=ref("Intervention"),
           errors={400: "a wrong action, preset or text", 404: "no such session",
                   409: "not live, not connected, or the exam is (not) paused"}),
    ]


def _ops_webhooks() -> list[Op]:
    """webhooks/routes.py: admins register endpoints and read the delivery log."""
    hook = "/api/webhooks/{webhook_id}"
    delivery_query = (("state", {"enum": list(WEBHOOK_STATES)}, "only deliveries in this state"),
                      ("before", {"type": "integer", "minimum": 0}, "deliveries older than this id (paging)"),
                      ("limit", {"type": "integer", "minimum": 1, "maximum": 200, "default": 50}, "page size"))
    return [
        Op("GET", "/api/webhooks", "Every webhook endpoint (never its secret)", "admin",
           (200, array(ref("WebhookEndpoint")))),
        Op("POST", "/api/webhooks", "Register an endpoint; its secret is served in this answer only", "admin",
           (201, ref("WebhookEndpoint")), body=ref("WebhookInput"),
           errors={400: "a wrong field (the reason names it), or a URL that is not allowed"}),
        Op("GET", hook, "One endpoint", "admin", (200, ref("WebhookEndpoint")), errors={404: "no such endpoint"}),
        Op("PATCH", hook, "Change an endpoint, or rotate its secret", "admin", (200, ref("WebhookEndpoint")),
           body=ref("WebhookInput"), errors={400: "a wrong field", 404: "no such endpoint"}),
        Op("DELETE", hook, "Remove an endpoint; its pending deliveries stop", "admin", (204, None),
           errors={404: "no such endpoint"}),
        Op("POST", f"{hook}/test", "Send a webhook.test event to this endpoint", "admin", (202, ref("WebhookTest")),
           errors={404: "no such endpoint"}),
        Op("GET", "/api/webhooks/deliveries", "The delivery log, newest first", "admin",
           (200, ref("WebhookDeliveries")),
           query=(("endpoint_id", {"type": "integer", "minimum": 0}, "only this endpoint's"), *delivery_query),
           errors={400: "a wrong filter"}),
        Op("GET", f"{hook}/deliveries", "One endpoint's delivery log, newest first", "admin",
           (200, ref("WebhookDeliveries")), query=delivery_query, errors={400: "a wrong filter"}),
        Op("POST", "/api/webhooks/deliveries/{delivery_id}/resend", "A failed delivery gets a new round of attempts",
           "admin", (202, ref("Resent")), errors={404: "no such delivery", 409: "the delivery has not failed"}),
    ]


def _ops_openapi() -> list[Op]:
    """This module."""
    return [
        Op("GET", "/api/openapi.json", "This document (OpenAPI 3.1)", "staff", (200, ref("OpenApi"))),
        Op("GET", "/api/docs", "This document as a page to read", "staff", (200, "text/html")),
    ]


def operations() -> list[Op]:
    return [*_ops_signaling(), *_ops_candidate(), *_ops_media(), *_ops_staff(), *_ops_report(), *_ops_live(),
            *_ops_webhooks(), *_ops_openapi()]


# --- the document ------------------------------------------------------------------------------------------------

def api_routes(app: web.Application) -> set[tuple[str, str]]:
    """(method, path template) of every route under /api in the router (HEAD, which GET brings, left out)."""
    out = set()
    for route in app.router.routes():
        path = route.resource.canonical if route.resource else ""
        if (path == "/api" or path.startswith("/api/")) and route.method not in ("HEAD", "OPTIONS"):
            out.add((route.method, _PARAM.sub(r"{\1}", path)))
    return out


def undocumented(app: web.Application) -> set[tuple[str, str]]:
    return api_routes(app) - {(op.method, op.path) for op in operations()}


def unrouted(app: web.Application) -> set[tuple[str, str]]:
    return {(op.method, op.path) for op in operations()} - api_routes(app)


_PATH_PARAMS = {
    "session_id": ({"type": "string", "format": "uuid"}, "the session's id"),
    "event_id": ({"type": "integer", "minimum": 1}, "the event's id"),
    "idx": ({"type": "integer", "minimum": 0}, "the segment's index (a batch: its first segment's)"),
    "fmt": ({"enum": ["csv", "json"]}, "the download's format"),
    "webhook_id": ({"type": "integer", "minimum": 1}, "the webhook endpoint's id"),
    "delivery_id": ({"type": "integer", "minimum": 1}, "the delivery's id"),
}
_AUTH: dict[str, tuple[str, list[dict[str, list[str]]], list[dict[str, list[str]]]]] = {
    "staff": ("Staff: a login (cookie, + CSRF token on changes) or an API token, either role.",
              [{"apiToken": []}, {"staffCookie": []}], [{"apiToken": []}, {"staffCookie": [], "csrf": []}]),
    "admin": ("Admins only: a login or API token of an admin.",
              [{"apiToken": []}, {"staffCookie": []}], [{"apiToken": []}, {"staffCookie": [], "csrf": []}]),
    "candidate": ("The candidate: the session's join token.", [{"joinToken": []}], [{"joinToken": []}]),
    "either": ("Staff (as above) or the candidate with the session's join token.",
               [{"apiToken": []}, {"staffCookie": []}, {"joinToken": []}],
               [{"apiToken": []}, {"staffCookie": [], "csrf": []}, {"joinToken": []}]),
}
_COMMON_ERRORS = {
    401: "no or a wrong credential (login, API token or join token)",
    503: "the database or Redis is unavailable: retry after Retry-After",
}


def _error_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": ref("Error")}}}


def _operation(op: Op) -> dict[str, Any]:
    status, body = op.ok
    what, read, write = _AUTH[op.auth]
    out: dict[str, Any] = {
        "operationId": f"{op.method.lower()}_" + re.sub(r"\W+", "_", op.path.removeprefix("/api/")).strip("_"),
        "summary": op.summary, "tags": [op.path.split("/")[2]],
        "description": f"{op.description}\n\n{what}".strip(),
        "security": read if op.method == "GET" else write}
    params = [{"name": name, "in": "path", "required": True, "schema": schema, "description": text}
              for name in re.findall(r"\{(\w+)\}", op.path) for schema, text in [_PATH_PARAMS[name]]]
    params += [{"name": name, "in": "query", "required": False, "schema": schema, "description": text}
               for name, schema, text in op.query]
    if params:
        out["parameters"] = params
    if op.body is not None:
        kind, schema = op.body if isinstance(op.body, tuple) else (JSON, op.body)
        out["requestBody"] = {"required": True, "content": {kind: {"schema": schema}}}
    ok: dict[str, Any] = {"description": "success"}
    if status == 101:
        ok["description"] = "switching protocols: the WebSocket is open"
    elif status == 204:
        ok["description"] = "done (no body)"
    elif isinstance(body, str):
        ok["content"] = {body: {"schema": {"type": "string", "contentMediaType": body}}}
    elif body is not None:
        ok["content"] = {JSON: {"schema": body}}
        if op.path.endswith(".{fmt}"):
            ok["content"]["text/csv"] = {"schema": {"type": "string"}}
    if op.headers:
        ok["headers"] = {name: {"description": text, "schema": {"type": "string"}} for name, text in op.headers.items()}
    responses: dict[str, Any] = {str(status): ok}
    for code, text in sorted({**_COMMON_ERRORS, **({403: "admin role required"} if op.auth == "admin" else {}),
                              **({400: "the body is not the JSON object described, or too deeply nested",
                                  413: "the body is too large"} if op.body is not None else {}),
                              **op.errors}.items()):
        if code == 302:
            responses["302"] = {"description": text, "headers": {"Location": {"schema": {"type": "string"}}}}
        else:
            responses[str(code)] = _error_response(text)
    out["responses"] = responses
    return out


def document(app: web.Application, base_url: str = "") -> dict[str, Any]:
    """The OpenAPI 3.1 document of the routes this app has (documented ones; see `undocumented`)."""
    routed = api_routes(app)
    paths: dict[str, dict[str, Any]] = {}
    for op in operations():
        if (op.method, op.path) in routed:
            paths.setdefault(op.path, {})[op.method.lower()] = _operation(op)
    return {
        "openapi": "3.1.0",
        "info": {"title": TITLE, "version": VERSION,
                 "description": "Sessions, signaling, review and live monitoring of the proctoring server. Errors "
                                "are JSON {\"error\": \"reason\"} (a refused API token in the Authorization header "
                                "answers a plain-text 401). Times are ISO 8601 with a zone; event times (start_s, "
                                "end_s) are seconds on the session media timeline, which is master video time."},
        "servers": [{"url": base_url or "/"}],
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "paths": dict(sorted(paths.items())),
        "components": {"schemas": SCHEMAS, "securitySchemes": SECURITY_SCHEMES},
    }


async def openapi_json(request: web.Request) -> web.Response:
    """GET /api/openapi.json"""
    require_user(request)
    doc = document(request.app, request.app[CTX].settings.base_url)
    return web.json_response(doc, dumps=lambda d: json.dumps(d, indent=1), headers={"Cache-Control": "no-store"})


async def docs_page(request: web.Request) -> web.Response:
    """GET /api/docs: the document as a page (rendered on the server: no script, no CDN)."""
    require_user(request)
    doc = document(request.app)
    ops = [(path, method.upper(), op) for path, item in doc["paths"].items() for method, op in item.items()]
    return render_page("api_docs.html", request, {
        "nav": "api", "doc": doc, "operations": ops,
        "schemas": {name: schema_html(schema, 2) for name, schema in doc["components"]["schemas"].items()},
        "dump": schema_html, "security": SECURITY_SCHEMES})


def schema_html(value: Any, indent: int | None = None) -> Markup:
    """A schema as escaped JSON text whose references link to the schema's section of the page."""
    text = str(escape(json.dumps(value, indent=indent)))
    return Markup(re.sub(r"&#34;#/components/schemas/(\w+)&#34;", r'<a href="#schema-\1">\1</a>', text))


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/api/openapi.json", openapi_json)
    app.router.add_get("/api/docs", docs_page)
