"""The live monitor's messages: one typed class per message, each with `to_json`.

They travel as JSON on Redis (proctor.store.live publishes them) and out of every proctor's WebSocket
(/api/live, web/live.py), where web/static/live.js reads them by `type`. Building a message anywhere else by
hand is how shapes drift apart: construct one of these instead.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass(frozen=True, kw_only=True)
class LiveMessage:
    type: ClassVar[str] = ""

    def body(self) -> dict[str, Any]:
        raise NotImplementedError

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, **self.body()}

    def dumps(self) -> str:
        return json.dumps(self.to_json())


@dataclass(frozen=True, kw_only=True)
class Published(LiveMessage):
    """A message every web process relays from Redis; `at` is the wall time it was published."""

    session_id: str
    at: float = field(default_factory=time.time)


@dataclass(frozen=True, kw_only=True)
class EventAlert(Published):
    """An event started, grew (a new peak or a merged instant) or ended."""

    type: ClassVar[str] = "event"
    action: str  # start | update | end
    event_id: int
    kind: str
    start_s: float
    end_s: float | None
    confidence: float
    count: int | None = None  # merged instants (copy/paste): how many
    message: str | None = None  # system events: what went wrong

    def body(self) -> dict[str, Any]:
        event: dict[str, Any] = {"id": self.event_id, "kind": self.kind, "start_s": self.start_s,
                                 "end_s": self.end_s, "confidence": self.confidence, "count": self.count}
        if self.message is not None:
            event["message"] = self.message
        return {"action": self.action, "session_id": self.session_id, "event": event, "at": self.at}


@dataclass(frozen=True, kw_only=True)
class SessionStatus(Published):
    """The session moved to another status (core.sessions), or was deleted (`deleted`)."""

    type: ClassVar[str] = "session"
    status: str
    reason: str | None = None

    def body(self) -> dict[str, Any]:
        data: dict[str, Any] = {"session_id": self.session_id, "status": self.status, "at": self.at}
        if self.reason is not None:
            data["reason"] = self.reason
        return data


@dataclass(frozen=True, kw_only=True)
class ConnectionState(Published):
    """The candidate's stream connected to or left a media node."""

    type: ClassVar[str] = "connection"
    connection: str  # connected | disconnected
    node: str

    def body(self) -> dict[str, Any]:
        return {"session_id": self.session_id, "connection": self.connection, "node": self.node, "at": self.at}


@dataclass(frozen=True, kw_only=True)
class Acknowledged(Published):
    """A proctor has seen a live alert: other monitors clear it too."""

    type: ClassVar[str] = "ack"
    event_id: int
    by: str | None

    def body(self) -> dict[str, Any]:
        return {"session_id": self.session_id, "event_id": self.event_id, "by": self.by, "at": self.at}


@dataclass(frozen=True, kw_only=True)
class Intervention(Published):
    """Live intervention (core.events.TIMELINE_KINDS): a proctor's message, request, pause, resume or end went to
    the candidate (`state` "sent", or "queued" when their page is not connected: a pause then shows when it is
    back), their page showed it ("shown") or they confirmed it ("ok"), or a break began or ended ("started",
    "ended")."""

    type: ClassVar[str] = "intervention"
    action: str  # message | adjust | pause | resume | end | break
    state: str
    event_id: int | None
    text: str | None = None
    by: str | None = None
    at_s: float | None = None  # session media time

    def body(self) -> dict[str, Any]:
        return {"session_id": self.session_id, "action": self.action, "state": self.state,
                "event_id": self.event_id, "text": self.text, "by": self.by, "at_s": self.at_s, "at": self.at}


# --- messages of one WebSocket, never published -------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Hello(LiveMessage):
    type: ClassVar[str] = "hello"
    user: str
    role: str

    def body(self) -> dict[str, Any]:
        return {"user": self.user, "role": self.role}


@dataclass(frozen=True, kw_only=True)
class HubState(LiveMessage):
    """The web process lost its Redis subscription (`reconnecting`) or has it back (`resync`: reload)."""

    type: ClassVar[str] = "hub"
    state: str

    def body(self) -> dict[str, Any]:
        return {"state": self.state}


@dataclass(frozen=True, kw_only=True)
class Overflow(LiveMessage):
    """A slow monitor lost this many messages: it reloads its state."""

    type: ClassVar[str] = "overflow"
    dropped: int

    def body(self) -> dict[str, Any]:
        return {"dropped": self.dropped}


@dataclass(frozen=True, kw_only=True)
class Pong(LiveMessage):
    type: ClassVar[str] = "pong"

    def body(self) -> dict[str, Any]:
        return {}
