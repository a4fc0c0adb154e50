"""What the server fixtures hand to tests: a served aiohttp app, and a media-node plugin that logs frames."""

from __future__ import annotations

from typing import Any

from aiohttp import web


class RunningApp:
    def __init__(self, runner: web.AppRunner, url: str) -> None:
        self.runner = runner
        self.url = url


class FrameLog:
    """A test plugin: the media time of every video frame each session's stream delivered, in order."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = {}

    def attach(self, stream: Any) -> None:
        log = self.times.setdefault(stream.session_id, [])
        stream.encoded_sinks.append(lambda frame, t: log.append(t) if frame.kind == "video" else None)

    async def start(self, node_id: str) -> None:
        pass

    async def stop(self) -> None:
        pass

    def stats(self) -> dict[str, Any]:
        return {"sessions": len(self.times)}
