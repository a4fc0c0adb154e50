"""What a media node receives of a candidate's microphone: its Opus packets as the encoded outlet hands them over
(the archive's source), and how many a second of audio they are (AUDIO_PTIME_MS)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from core import opus
from media_server.outlets import EncodedFrame
from tests.support.waiting import wait_for


@dataclass
class AudioRecord:
    frames: list[EncodedFrame] = field(default_factory=list)

    def __call__(self, frame: EncodedFrame, media_time: float) -> None:
        if frame.kind == "audio":
            self.frames.append(frame)

    def seconds(self) -> float:
        """Audio the recorded packets span, by their RTP timestamps (48 kHz), the last packet included."""
        if not self.frames:
            return 0.0
        last = self.frames[-1]
        return (last.timestamp - self.frames[0].timestamp) / 48_000 + opus.packet_duration_ms(last.data) / 1000

    def packets_per_second(self) -> float:
        return len(self.frames) / self.seconds()

    def durations_ms(self) -> dict[float, int]:
        """TOC duration -> packets."""
        out: dict[float, int] = {}
        for frame in self.frames:
            d = opus.packet_duration_ms(frame.data)
            out[d] = out.get(d, 0) + 1
        return out


async def record_stream_audio(media_node: Any, session_id: str, seconds: float, within: float) -> AudioRecord:
    """`record_audio` of the session's stream once the node carries it (within 15 s)."""

    async def carried() -> Any:
        return media_node.streams.get(session_id)

    return await record_audio(await wait_for(carried, within=15), seconds, within)


async def record_audio(stream: Any, seconds: float, within: float) -> AudioRecord:
    """`seconds` of a stream's audio (RTP time, not wall time: a busy machine's senders may fall behind)."""
    record = AudioRecord()
    stream.encoded_sinks.append(record)

    async def enough() -> bool:
        return record.seconds() >= seconds

    try:
        await wait_for(enough, within=within)
    finally:
        stream.encoded_sinks.remove(record)
    return record
