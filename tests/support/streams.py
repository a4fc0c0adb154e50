"""A stand-in for media_server.outlets.Stream: what a plugin (the analysis) sees of a stream, without a peer
connection. It records what the candidate would be told and who subscribed to its frames."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class FakeClock:
    end_s: float = 0.0


@dataclass
class FakeSampler:
    subscribers: list[Any] = field(default_factory=list)

    def subscribe(self, subscriber: Any) -> None:
        self.subscribers.append(subscriber)


@dataclass
class FakeStream:
    session_id: str = "s"
    encoded_sinks: list[Any] = field(default_factory=list)
    signal_sinks: list[Any] = field(default_factory=list)
    hold_sinks: list[Any] = field(default_factory=list)  # a pause or break (media_server/intervention.py)
    held: bool = False
    close_hooks: list[Any] = field(default_factory=list)
    clock: FakeClock = field(default_factory=FakeClock)
    sampler: FakeSampler = field(default_factory=FakeSampler)
    losses: int = 0
    notices: list[dict[str, Any]] = field(default_factory=list)  # what notify_candidate was given, in order

    async def request_keyframe(self) -> bool:
        return False  # no encoder to ask

    def notify_candidate(self, message: dict[str, Any]) -> None:
        self.notices.append(message)
