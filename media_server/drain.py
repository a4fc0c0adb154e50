"""Graceful drain of a media node: take no new stream, let the candidates finish, then move the rest elsewhere.

SIGTERM, the signed `POST /drain` of the node's internal API or `proctor node drain NODE_ID` start it:

    serving -> draining -> moving -> done (the node then stops cleanly and the process exits 0)

- draining: the next heartbeat, sent at once, carries `draining`; proctor.store.nodes.reserve refuses the node and
  core.nodes.choose skips it, so no offer is placed on it any more, not even a reload of a session it carries
  (signaling/api.py sends that elsewhere). The node also refuses any offer itself (503). The candidates it carries
  stream on until they finish, or until the drain timeout (DRAIN_TIMEOUT_S) passes.
- moving: each page still here is asked to move (`{"type": "move"}` on its data channel; web/static/candidate.js
  reconnects at once, without an alarm). Its new offer goes through signaling, which closes the stream here
  first (the node persists its media time) and then offers it to another node, which continues the session
  media timeline from that time: the archive's segments from both nodes tile it. A page counts as moved once the
  session's row shows another node and media time past where this node stopped (the other node received frames),
  or once the session is no longer open. Asks are spaced a little so a full node does not hand every DTLS
  handshake to the receiving node in the same instant.
- done: after every page moved, or DRAIN_MOVE_TIMEOUT_S after the asks; streams still here are closed then.

The state machine knows the node only through `DrainHost` (its id, its streams, a heartbeat now), and reads the
sessions' rows itself; it never writes one.

SIGINT (Ctrl-C) still stops a node at once: `proctor up` in a terminal is stopped that way, and every child of
it gets the SIGINT too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import asyncpg
import redis.asyncio as aioredis

from core.sessions import OPEN_STATUSES
from media_server.stream import CandidateStream
from proctor.redis import SESSION_NODE

log = logging.getLogger(__name__)

SERVING, DRAINING, MOVING, DONE = "serving", "draining", "moving", "done"
POLL_S = 0.25
# Between two pages asked to move: a node full of candidates (24) asks them all within ~5 s rather than at once.
MOVE_SPACING_S = 0.2
# `active`: sent again if the page's channel opens only later (stream.notify_candidate); the page words it itself.
MOVE_MESSAGE = {"type": "move", "kind": "move", "active": True}


class DrainHost(Protocol):
    node_id: str
    streams: dict[str, CandidateStream]

    async def beat(self) -> None:
        """Publish the node's state (with `draining`) in the registry now, not at the next heartbeat."""


@dataclass
class Move:
    session_id: str
    asked_at: float
    stream: CandidateStream  # this node's stream: closed (by signaling's relay) before the other node answers
    moved_at: float | None = None
    to_node: str | None = None
    outcome: str = "asked"  # asked -> moved | ended | not moved


@dataclass
class Drain:
    """One node's drain; `start` is idempotent, `finished` is set when the node may stop."""

    host: DrainHost
    pool: asyncpg.Pool  # reads the moved sessions' rows
    redis: aioredis.Redis  # lets go of the sessions it closes unmoved
    timeout_s: float
    move_timeout_s: float
    state: str = SERVING
    started_at: float | None = None
    moving_at: float | None = None
    done_at: float | None = None
    finished_here: list[str] = field(default_factory=list)  # sessions that ended on this node while draining
    moves: dict[str, Move] = field(default_factory=dict)
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    @property
    def active(self) -> bool:
        return self.state != SERVING

    def start(self, timeout_s: float | None = None, reason: str = "") -> bool:
        """Begin draining (False when already draining: the first call's timeout holds)."""
        if self.active:
            return False
        if timeout_s is not None:
            self.timeout_s = timeout_s
        self.state, self.started_at = DRAINING, time.time()
        log.info("node %s draining (%s): keeps %d candidate(s) up to %.0f s, then moves them",
                 self.host.node_id, reason or "asked", len(self.host.streams), self.timeout_s)
        self._task = asyncio.create_task(self._run(), name="drain")
        return True

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        try:
            await self._announce()
            carried = set(self.host.streams)
            deadline = time.monotonic() + self.timeout_s
            while time.monotonic() < deadline:
                if not self.host.streams:  # every candidate finished: nothing to move
                    break
                await asyncio.sleep(POLL_S)  # polled: streams come and go through the node, not through here
            self.finished_here = sorted(carried - set(self.host.streams))
            if self.host.streams:
                await self._move_all()
        except asyncio.CancelledError:
            raise
        except Exception:  # a drain that breaks must still let the node stop
            log.exception("drain of node %s failed; stopping anyway", self.host.node_id)
        finally:
            self.state, self.done_at = DONE, time.time()
            log.info("node %s drained: %s", self.host.node_id, self.summary())
            self.finished.set()

    async def _announce(self) -> None:
        """Leave placement now; a failed beat is retried by the regular heartbeat, which carries it too."""
        try:
            await self.host.beat()
        except Exception as exc:
            log.warning("node %s: drain not announced yet (%s); the next heartbeat carries it", self.host.node_id, exc)

    async def _move_all(self) -> None:
        self.state, self.moving_at = MOVING, time.time()
        for session_id, stream in list(self.host.streams.items()):
            self.moves[session_id] = Move(session_id, time.time(), stream)
            stream.notify_candidate(dict(MOVE_MESSAGE))
            await asyncio.sleep(MOVE_SPACING_S)
        deadline = time.monotonic() + self.move_timeout_s
        while time.monotonic() < deadline:
            waiting = [m for m in self.moves.values() if m.outcome == "asked"]
            if not waiting:
                return
            await self._check(waiting)
            await asyncio.sleep(POLL_S)
        for move in self.moves.values():
            if move.outcome == "asked":
                move.outcome = "not moved"
                if self.host.streams.get(move.session_id) is move.stream:
                    await move.stream.close("node drained; the page did not move in time")
                    await self._let_go(move.session_id)

    async def _let_go(self, session_id: str) -> None:
        """The stream was closed cleanly (its media time persisted): when the page comes back, signaling must place
        it as new rather than as the survivor of a dead node, which would leave up to a second's hole."""
        key = SESSION_NODE.format(session_id=session_id)
        try:
            if await self.redis.get(key) == self.host.node_id:
                await self.redis.delete(key)
        except Exception as exc:
            log.warning("drain: session %s not let go: %s", session_id, exc)

    async def _check(self, waiting: list[Move]) -> None:
        """Which asked pages stream elsewhere now (or whose session ended)."""
        try:
            async with self.pool.acquire() as conn:
                rows = await conn.fetch("SELECT id::text AS id, status, node_id, duration_s FROM sessions "
                                        "WHERE id = ANY($1::uuid[])", [m.session_id for m in waiting])
        except Exception as exc:  # the database hiccuped: ask again on the next round
            log.warning("drain: session rows not read: %s", exc)
            return
        by_id = {r["id"]: r for r in rows}
        for move in waiting:
            row = by_id.get(move.session_id)
            if row is None or row["status"] not in OPEN_STATUSES:
                move.outcome, move.moved_at = "ended", time.time()
            elif move.stream.closed.is_set() and row["node_id"] not in (None, self.host.node_id) \
                    and float(row["duration_s"]) > move.stream.clock.end_s + 0.001:
                # Another node took the session over and persisted media past where this one stopped: it
                # received frames (its first persist is at least a frame past the time it continued from).
                move.outcome, move.moved_at, move.to_node = "moved", time.time(), row["node_id"]

    def summary(self) -> dict[str, Any]:
        """The drain's timeline (unix times), for /stats, the CLI and the log."""
        return {
            "state": self.state, "timeout_s": self.timeout_s, "move_timeout_s": self.move_timeout_s,
            "started_at": self.started_at, "moving_at": self.moving_at, "done_at": self.done_at,
            "carried": len(self.host.streams), "finished_here": len(self.finished_here),
            "moves": [{"session_id": m.session_id, "asked_at": m.asked_at, "moved_at": m.moved_at,
                       "to_node": m.to_node, "outcome": m.outcome,
                       "move_s": round(m.moved_at - m.asked_at, 3) if m.moved_at else None}
                      for m in self.moves.values()],
        }
