"""WebM files of the archive: copy-mux live encoded frames, concatenate, probe, recover.

Nothing here decodes or re-encodes on the write paths: VP8 frames and Opus packets go into Matroska blocks as they
came off the wire (`probe(decode=True)` and `frame_at` decode, for checks and tests only).

Time is milliseconds everywhere (WebM's time base is 1/1000). A file written by `WebmWriter` starts with a video
keyframe at pts 0 and its duration is the last video frame's pts + duration; every video block carries its own
duration (BlockDuration, see VIDEO_DEFAULT_RATE), so the duration read back from the packets is exact, also from
a file cut off by a crash.

- `WebmWriter`: one segment file. The stream headers are built without opening any encoder (streams are made from
  a never-opened template codec context, so no libvpx/libopus state is allocated); Opus gets a hand-built OpusHead
  as CodecPrivate. Clusters close every CLUSTER_MS and every write is flushed, so a process killed mid-segment
  loses at most the open cluster (0.5 s) and what the interleaver holds while it waits for the other track's
  next packet (the audio's lag behind the video: ~0.1 s with 60-ms Opus packets, at most 0.5 s).
- `concat`: stream copy of several such files into one, each input offset by the summed durations of the inputs
  before it, or placed at its own start on the session timeline (a tail overlapping the next input is cut);
  the output has Cues and its header Duration is the end of the last input exactly.
- `probe`, `frame_at`: what a file holds; the frame displayed at a time.
- `recover_partial`: a proper WebM from the packets a crashed writer left behind.
"""

from __future__ import annotations

import contextlib
import io
import logging
import struct
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import av.error

from archiver import mkvcat
from archiver.mkvcat import Unsupported, concat_clusters
from core import vp8

log = logging.getLogger(__name__)

MS = Fraction(1, 1000)
OPUS_RATE = 48_000
# Matroska muxer options for segments written live: a cluster is kept in memory until it closes, so its length
# bounds what a crash loses; flush_packets pushes each closed cluster to the file at once; the interleaver
# holds packets of one stream while it waits for the other (default: up to 10 s), capped here at 0.5 s.
# Why 0.5-s clusters, not FFmpeg's 5 s or the 1 s used before: a cluster reaches the disk only when a packet past
# its end leaves the interleaver, which waits for the audio (60-ms Opus packets trail the video by ~0.1-0.2 s).
# With 1-s clusters a node killed 1.3 s into a segment kept 1.07 s of it, killed 1.9 s in it would keep the same;
# with 0.5 s the loss is at most half a second plus that lag (tests/test_webm.py, kills at 0.7-1.9 s). A cluster
# costs ~20 bytes of header: 40 bytes a second against ~40 kB of media.
CLUSTER_MS = 500
LIVE_OPTIONS = {"cluster_time_limit": str(CLUSTER_MS), "flush_packets": "1", "max_interleave_delta": "500000"}
# The Matroska muxer writes a video block's duration (BlockDuration) only when it differs from the track's
# DefaultDuration, which it derives from the stream frame rate. A nominal 30 fps (33.3 ms) would swallow the 33 and
# 34 ms durations of real frames and read back as 33 (a millisecond lost at every file end). Declaring 1000 fps
# (1 ms) keeps every real duration explicit; a 1-ms frame, were there one, reads back right from the default.
VIDEO_DEFAULT_RATE = Fraction(1000, 1)



def opus_head(channels: int = 2, pre_skip: int = 0, rate: int = OPUS_RATE) -> bytes:
    """The 19-byte OpusHead (RFC 7845 5.1) that Matroska stores as the Opus track's CodecPrivate.

    pre_skip defaults to 0: the packets come from a live stream already running (no encoder priming at the start
    of a file), and no CodecDelay is written, so a non-zero pre-skip would only drop the first milliseconds and
    disagree with the container's (absent, i.e. zero) CodecDelay.
    """
    return b"OpusHead" + struct.pack("<BBHIhB", 1, channels, pre_skip, rate, 0, 0)


def _template_stream(codec_name: str, **kwargs: Any) -> Any:
    """A stream of a throwaway, never-started container: a template whose codec context is never opened."""
    scratch = av.open(io.BytesIO(), "w", format="webm")
    return scratch.add_stream(codec_name, **kwargs)


def _to_ms(value: int | None, time_base: Fraction | None) -> int:
    if value is None:
        return 0
    if time_base is None or time_base == MS:
        return int(value)
    return round(value * time_base * 1000)


# --- writing ---------------------------------------------------------------------------------------------------
class WebmWriter:
    """One WebM file from already-encoded VP8 frames and Opus packets (pts in ms from the file's first frame).

    The caller writes a keyframe first and increasing timestamps. A keyframe of another size may come at any time:
    it is muxed as it is (the track header keeps the first size; VP8 decoders take the size from keyframes).
    The file is created at the first packet; `close()` writes Cues and the Duration.
    """

    def __init__(self, path: str | Path, width: int, height: int, with_audio: bool = True, *,
                 audio_channels: int = 2, opus_pre_skip: int = 0, options: dict[str, str] | None = None) -> None:
        self.path = Path(path)
        self._out = av.open(str(self.path), "w", format="webm", options={**LIVE_OPTIONS, **(options or {})})
        video = self._out.add_stream_from_template(_template_stream("libvpx"), opaque=False)
        video.codec_context.width, video.codec_context.height = int(width), int(height)
        video.codec_context.framerate = VIDEO_DEFAULT_RATE
        video.time_base = MS
        self._video = video
        self._audio = None
        if with_audio:
            audio = self._out.add_stream_from_template(_template_stream("libopus", rate=OPUS_RATE))
            audio.codec_context.layout = "stereo" if audio_channels == 2 else "mono"
            audio.codec_context.extradata = opus_head(audio_channels, opus_pre_skip)
            audio.time_base = MS
            self._audio = audio
        self._video_frames = 0
        self._audio_packets = 0
        self._audio_dropped = 0
        self._last_video_pts = -1
        self._last_audio_pts = -1
        self._end_ms = 0
        self._bytes_written = 0
        self._closed = False

    def write_video(self, data: bytes, pts_ms: int, duration_ms: int, keyframe: bool) -> None:
        if self._closed:
            raise ValueError("writer is closed")
        if self._video_frames == 0 and not keyframe:
            raise ValueError("the first video frame of a WebM segment must be a keyframe")
        if pts_ms <= self._last_video_pts:
            raise ValueError(f"video pts {pts_ms} ms not after {self._last_video_pts} ms")
        packet = av.Packet(data)
        packet.pts = packet.dts = int(pts_ms)
        packet.duration = int(duration_ms)
        packet.time_base = MS
        packet.stream = self._video
        packet.is_keyframe = bool(keyframe)
        self._out.mux_one(packet)
        self._video_frames += 1
        self._last_video_pts = int(pts_ms)
        self._end_ms = int(pts_ms) + int(duration_ms)

    def write_audio(self, data: bytes, pts_ms: int, duration_ms: int) -> None:
        """Mux one Opus packet; packets before the file start or not after the previous one are dropped."""
        if self._closed:
            raise ValueError("writer is closed")
        if self._audio is None:
            return
        if pts_ms < 0 or pts_ms <= self._last_audio_pts:
            self._audio_dropped += 1
            return
        packet = av.Packet(data)
        packet.pts = packet.dts = int(pts_ms)
        packet.duration = int(duration_ms)
        packet.time_base = MS
        packet.stream = self._audio
        packet.is_keyframe = True
        self._out.mux_one(packet)
        self._audio_packets += 1
        self._last_audio_pts = int(pts_ms)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._out.close()
        self._bytes_written = self.path.stat().st_size if self.path.exists() else 0

    def __enter__(self) -> WebmWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def video_frames(self) -> int:
        return self._video_frames

    @property
    def audio_packets(self) -> int:
        return self._audio_packets

    @property
    def audio_dropped(self) -> int:
        return self._audio_dropped

    @property
    def duration_ms(self) -> int:
        """Last video frame's pts + duration."""
        return self._end_ms

    @property
    def bytes_written(self) -> int:
        """File size at close (0 before close, and when no frame was written: no file is created then)."""
        return self._bytes_written


# --- reading ---------------------------------------------------------------------------------------------------
@dataclass
class ProbeResult:
    duration_s: float  # last video pts + its duration (from the packets, not the header)
    video_frames: int
    first_is_keyframe: bool  # the demuxer's flag and the VP8 header agree
    has_cues: bool
    audio_packets: int
    width: int  # from the track header (the first keyframe's size)
    height: int
    decoded_frames: int | None = None  # decode=True only
    decode_errors: int | None = None
    audio_decoded_samples: int | None = None
    audio_decode_errors: int | None = None
    duration_ms: int = 0
    start_s: float = 0.0  # first video pts
    header_duration_s: float | None = None  # the container's Duration element, None when absent
    keyframes: int = 0
    cue_points: int = 0
    sizes: list[tuple[int, int]] = field(default_factory=list)  # distinct keyframe sizes, in order
    has_opus_head: bool = False
    truncated: bool = False  # demuxing stopped on an error before the end


@dataclass
class ConcatResult:
    duration_s: float
    video_frames: int
    audio_packets: int
    width: int  # the output's track header: the first input's size
    height: int
    duration_ms: int = 0
    inputs: int = 0
    input_durations_ms: list[int] = field(default_factory=list)
    audio_dropped: int = 0  # audio past the end of its input's video (overlapping the next input)
    video_trimmed: int = 0  # video frames dropped because the next input starts before them (placements)
    method: str = "remux"  # or "clusters" (archiver.mkvcat)


def _packets(container: Any, streams: list[Any]) -> Iterator[tuple[Any, bool]]:
    """Demux packets with data; yields (packet, False) and finally (None, True) if the file ended in an error."""
    try:
        for packet in container.demux(streams):
            if packet.size:
                yield packet, False
    except (av.error.FFmpegError, EOFError, OSError):
        yield None, True


def probe(path: Path, decode: bool = False) -> ProbeResult:
    path = Path(path)
    with av.open(str(path)) as container:
        vstream = container.streams.video[0] if container.streams.video else None
        astream = container.streams.audio[0] if container.streams.audio else None
        streams = [s for s in (vstream, astream) if s is not None]
        header_duration = container.duration / 1_000_000 if container.duration is not None else None
        result = ProbeResult(duration_s=0.0, video_frames=0, first_is_keyframe=False, has_cues=False,
                             audio_packets=0, width=vstream.codec_context.width if vstream else 0,
                             height=vstream.codec_context.height if vstream else 0,
                             header_duration_s=header_duration)
        if astream is not None:
            extradata = astream.codec_context.extradata or b""
            result.has_opus_head = extradata[:8] == b"OpusHead"
        if decode:
            result.decoded_frames = result.decode_errors = 0
            result.audio_decoded_samples = result.audio_decode_errors = 0
        first_pts = last_pts = last_duration = None
        for packet, failed in _packets(container, streams):
            if failed:
                result.truncated = True
                break
            if packet.stream is vstream:
                data = bytes(packet)
                if result.video_frames == 0:
                    result.first_is_keyframe = bool(packet.is_keyframe) and vp8.is_keyframe(data)
                    first_pts = _to_ms(packet.pts, packet.time_base)
                result.video_frames += 1
                size = vp8.frame_size(data)
                if size is not None:
                    result.keyframes += 1
                    if size not in result.sizes:
                        result.sizes.append(size)
                last_pts = _to_ms(packet.pts, packet.time_base)
                last_duration = _to_ms(packet.duration, packet.time_base)
                if decode:
                    result.decoded_frames = (result.decoded_frames or 0) + _decode_count(
                        vstream, packet, result, "decode_errors")
            else:
                result.audio_packets += 1
                if decode:
                    result.audio_decoded_samples = (result.audio_decoded_samples or 0) + _decode_count(
                        astream, packet, result, "audio_decode_errors", samples=True)
        if decode and vstream is not None:
            result.decoded_frames = (result.decoded_frames or 0) + _decode_count(
                vstream, None, result, "decode_errors")
    if last_pts is not None:
        result.duration_ms = last_pts + (last_duration or 0)
        result.duration_s = result.duration_ms / 1000
        result.start_s = (first_pts or 0) / 1000
    result.cue_points = cue_points(path)
    result.has_cues = result.cue_points > 0
    return result


def _decode_count(stream: Any, packet: Any, result: ProbeResult, errors: str, samples: bool = False) -> int:
    try:
        frames = stream.codec_context.decode(packet)
    except (av.error.FFmpegError, ValueError):
        setattr(result, errors, getattr(result, errors) + 1)
        return 0
    return sum(f.samples for f in frames) if samples else len(frames)


def frame_at(path: Path, t: float) -> tuple[float, Any]:
    """(pts in s, decoded av.VideoFrame) of the frame displayed at t: the last frame with pts <= t.

    Seeks to the keyframe at or before t through the file's index (Cues) and decodes forward from it.
    Before the first frame: the first frame; after the last: the last.
    """
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        time_base = Fraction(stream.time_base or MS)
        target = Fraction(t).limit_denominator(1_000_000)
        container.seek(max(0, int(target / time_base)), backward=True, any_frame=False, stream=stream)
        at, after = _decode_until(container, stream, time_base, target)
        if at is None:  # the seek landed after t (t before the first keyframe): from the start
            container.seek(0, backward=True, any_frame=False, stream=stream)
            at, after = _decode_until(container, stream, time_base, target)
        found = at or after
        if found is None:
            raise ValueError(f"{path}: no decodable video frame")
        return float(found[0]), found[1]


def _decode_until(container: Any, stream: Any, time_base: Fraction,
                  target: Fraction) -> tuple[tuple[Fraction, Any] | None, tuple[Fraction, Any] | None]:
    """Decode from the current position: (last frame with pts <= target, first frame after it)."""
    at = None
    for packet in container.demux(stream):
        for frame in stream.decode(packet):
            pts = Fraction(frame.pts) * time_base
            if pts > target:
                return at, (pts, frame)
            at = (pts, frame)
    return at, None


# --- Cues (EBML) -----------------------------------------------------------------------------------------------
def cue_points(path: Path) -> int:
    """Number of CuePoints in the Cues the SeekHead points at (or met before the first Cluster); 0 if none.

    Reads the element tree (a few small reads), not a byte scan: a 4-byte id can occur inside frame data.
    """
    try:
        with open(path, "rb") as f:
            element = mkvcat.read_element(f)
            if element is None or element[0] != mkvcat.EBML or element[1] is None:
                return 0
            f.seek(element[2] + element[1])
            segment = mkvcat.read_element(f)
            if segment is None or segment[0] != mkvcat.SEGMENT:
                return 0
            segment_start = segment[2]
            segment_end = segment_start + segment[1] if segment[1] is not None else None
            cues_at: list[int] = []
            pos = segment_start
            while segment_end is None or pos < segment_end:
                f.seek(pos)
                element = mkvcat.read_element(f)
                if element is None:
                    break
                eid, size, start = element
                if size is None:
                    break
                if eid == mkvcat.CLUSTER:
                    break
                if eid == mkvcat.CUES:
                    cues_at.append(pos)
                elif eid == mkvcat.SEEK_HEAD and size < 1 << 20:
                    for seek_id, seek in mkvcat.children(f.read(size)):
                        if seek_id != mkvcat.SEEK:
                            continue
                        fields = dict(mkvcat.children(seek))
                        points_at_cues = fields.get(mkvcat.SEEK_ID) == mkvcat.encode_id(mkvcat.CUES)
                        if points_at_cues and mkvcat.SEEK_POSITION in fields:
                            cues_at.append(segment_start + int.from_bytes(fields[mkvcat.SEEK_POSITION], "big"))
                pos = start + size
            for offset in cues_at:
                f.seek(offset)
                element = mkvcat.read_element(f)
                if element is None or element[0] != mkvcat.CUES or element[1] is None or element[1] > 1 << 28:
                    continue
                data = f.read(element[1])
                if len(data) == element[1]:
                    return sum(1 for eid, _ in mkvcat.children(data) if eid == mkvcat.CUE_POINT)
    except (OSError, ValueError):
        return 0
    return 0


# --- copying ---------------------------------------------------------------------------------------------------
class _CopyOut:
    """Output of a stream copy: streams made from input stream templates, packets shifted by an offset in ms."""

    def __init__(self, output: Path, video_template: Any, audio_template: Any | None) -> None:
        self.container = av.open(str(output), "w", format="webm")
        self.video = self.container.add_stream_from_template(video_template)
        self.video.codec_context.framerate = VIDEO_DEFAULT_RATE
        self.video.time_base = MS
        self.audio = None
        if audio_template is not None:
            self.audio = self.container.add_stream_from_template(audio_template)
            self.audio.time_base = MS
        self.video_frames = 0
        self.audio_packets = 0
        self.audio_dropped = 0
        self.video_trimmed = 0
        self.end_ms = 0
        self._last_audio_end = 0

    def copy(self, packets: list[Any], vstream: Any, offset_ms: int, end_ms: int, start_ms: int = 0) -> None:
        """Mux one input's packets (in file order) at +offset_ms, keeping those inside [start_ms, end_ms): the
        frame and the audio packet that straddle end_ms are shortened to end there."""
        in_ms: dict[int, bool] = {}  # per input stream: is its time base already 1/1000 (WebM's)?
        for packet in packets:
            stream = packet.stream
            native = in_ms.get(id(stream))
            if native is None:
                native = in_ms[id(stream)] = Fraction(stream.time_base or MS) == MS
            if native:
                pts, duration = packet.pts, packet.duration or 0
            else:
                pts, duration = _to_ms(packet.pts, packet.time_base), _to_ms(packet.duration, packet.time_base)
                packet.time_base = MS
            if stream is vstream:
                if pts < start_ms:
                    continue
                if pts >= end_ms:  # the next input already starts here (concat with placements)
                    self.video_trimmed += 1
                    continue
                if pts + duration > end_ms:  # the last kept frame lasts until the next input starts
                    duration = end_ms - pts
                    packet.duration = duration
                packet.stream = self.video
                self.video_frames += 1
            else:
                if self.audio is None:
                    continue
                if pts < start_ms or pts >= end_ms or pts + offset_ms < self._last_audio_end:
                    self.audio_dropped += 1
                    continue
                if pts + duration > end_ms:  # the file ends with its video
                    duration = end_ms - pts
                    packet.duration = duration
                packet.stream = self.audio
                self._last_audio_end = pts + offset_ms + max(duration, 1)
                self.audio_packets += 1
            if offset_ms or not native:
                packet.pts = packet.dts = pts + offset_ms
                if not native:
                    packet.duration = duration
            self.container.mux_one(packet)
        self.end_ms = max(self.end_ms, offset_ms + end_ms)

    def close(self) -> None:
        self.container.close()


def _read_input(path: Path) -> tuple[Any, Any, Any, list[Any], bool]:
    """(container, video stream, audio stream, packets, truncated); the caller closes the container."""
    container = av.open(str(path))
    vstream = container.streams.video[0] if container.streams.video else None
    astream = container.streams.audio[0] if container.streams.audio else None
    packets: list[Any] = []
    truncated = False
    for packet, failed in _packets(container, [s for s in (vstream, astream) if s is not None]):
        if failed:
            truncated = True
            break
        packets.append(packet)
    return container, vstream, astream, packets, truncated


def _video_end_ms(packets: list[Any], vstream: Any) -> int | None:
    """Last video packet's pts + duration (its predecessor's duration if it has none)."""
    video = [p for p in packets if p.stream is vstream]
    if not video:
        return None
    last = video[-1]
    duration = _to_ms(last.duration, last.time_base)
    if duration <= 0 and len(video) > 1:
        duration = _to_ms(last.pts, last.time_base) - _to_ms(video[-2].pts, video[-2].time_base)
    return _to_ms(last.pts, last.time_base) + max(duration, 0)


def _has_audio_packets(container: Any) -> bool:
    if not container.streams.audio:
        return False
    for packet, failed in _packets(container, [container.streams.audio[0]]):
        return not failed and packet is not None
    return False


def concat(inputs: list[Path], output: Path, starts_ms: list[int] | None = None,
           fast: bool = False) -> ConcatResult:
    """Stream-copy WebM files (each starting at pts 0 on a keyframe) into one on one timeline.

    With `fast`, inputs that need no cutting are joined by archiver.mkvcat (whole Clusters copied as bytes,
    ~10x faster; frames and packets are then not counted: video_frames/audio_packets are -1); anything it does
    not handle falls back to the PyAV remux below.

    Without `starts_ms`, inputs go back to back: input i is shifted by the summed durations (last video pts +
    duration) of inputs 0..i-1, to the millisecond. With `starts_ms` (non-decreasing, one per input), input i is
    placed at its own start, so output time is the timeline the starts come from (session media time) even
    where the inputs do not tile it: a hole stays a hole (the player holds the last frame), and where input i
    runs past the start of input i+1 (a segment recovered from a crashed node overlapping the reconnection's
    first one) its tail is cut there. The later input is the one kept whole because it starts on a keyframe;
    dropping its head instead would leave undecodable frames up to its next keyframe.
    Audio past the end of its input's video is dropped (the last packet's duration is cut at it), so the header
    Duration is the end of the last input. The output has an audio track if any input has audio packets.
    Writing to a regular file, the muxer adds Cues and the Duration at close.
    """
    inputs = [Path(p) for p in inputs]
    if not inputs:
        raise ValueError("nothing to concatenate")
    _check_starts(starts_ms, len(inputs))
    if fast:
        try:
            copied = concat_clusters(inputs, Path(output), starts_ms)
        except Unsupported as exc:
            log.info("cluster copy not possible (%s): remuxing", exc)
        else:
            return ConcatResult(duration_s=copied.duration_ms / 1000, video_frames=-1, audio_packets=-1,
                                width=copied.width, height=copied.height, duration_ms=copied.duration_ms,
                                inputs=len(inputs), input_durations_ms=copied.input_durations_ms,
                                audio_dropped=copied.audio_dropped, method="clusters")
    video_from = audio_from = None
    for path in inputs:  # headers (and the first audio packet) only: which inputs give the track templates
        with av.open(str(path)) as container:
            if video_from is None and container.streams.video:
                video_from = path
            if audio_from is None and _has_audio_packets(container):
                audio_from = path
        if video_from is not None and audio_from is not None:
            break
    if video_from is None:
        raise ValueError("no input has a video track")
    with av.open(str(video_from)) as vsource:
        asource = av.open(str(audio_from)) if audio_from is not None else None
        try:
            out = _CopyOut(Path(output), vsource.streams.video[0],
                           asource.streams.audio[0] if asource is not None else None)
        finally:
            if asource is not None:
                asource.close()
    result = ConcatResult(duration_s=0.0, video_frames=0, audio_packets=0, width=out.video.codec_context.width,
                          height=out.video.codec_context.height, inputs=len(inputs))
    offset = 0
    # Demuxing the next input overlaps muxing this one: PyAV releases the GIL in both, and a 2-hour master is
    # ~600k packets, so finalize takes roughly the longer of the two instead of their sum.
    reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="concat-read")
    pending: Future[tuple[Any, Any, Any, list[Any], bool]] | None = reader.submit(_read_input, inputs[0])
    try:
        for i, path in enumerate(inputs):
            assert pending is not None
            container, vstream, _, packets, truncated = pending.result()
            pending = reader.submit(_read_input, inputs[i + 1]) if i + 1 < len(inputs) else None
            try:
                if truncated:
                    raise ValueError(f"{path}: truncated input (recover it first)")
                end = _video_end_ms(packets, vstream) if vstream is not None else None
                if end is None:
                    raise ValueError(f"{path}: no video frames")
                if starts_ms is not None:
                    offset = starts_ms[i]
                    if i + 1 < len(inputs):
                        end = min(end, starts_ms[i + 1] - offset)
                if end > 0:  # an input wholly covered by the next one adds nothing
                    out.copy(packets, vstream, offset, end)
            finally:
                container.close()
            result.input_durations_ms.append(max(end, 0))
            offset += max(end, 0)
    finally:
        if pending is not None:  # stopped early: the prefetched input must be closed too
            with contextlib.suppress(Exception):
                pending.result()[0].close()
        reader.shutdown(wait=True)
        out.close()
    result.video_frames, result.audio_packets, result.audio_dropped = out.video_frames, out.audio_packets, \
        out.audio_dropped
    result.video_trimmed = out.video_trimmed
    result.duration_ms = out.end_ms
    result.duration_s = out.end_ms / 1000
    return result


def _check_starts(starts_ms: list[int] | None, count: int) -> None:
    if starts_ms is None:
        return
    if len(starts_ms) != count:
        raise ValueError(f"{len(starts_ms)} starts for {count} inputs")
    if any(s < 0 for s in starts_ms) or any(b < a for a, b in zip(starts_ms, starts_ms[1:], strict=False)):
        raise ValueError(f"input starts must be non-negative and in order: {starts_ms}")


def recover_partial(path: Path, output: Path) -> ProbeResult | None:
    """A proper WebM at `output` from what a crashed writer left at `path`; None when nothing usable.

    Reads every packet the demuxer can (stops at the error a cut-off file ends with), keeps video from the first
    keyframe on (timestamps unchanged: the file stays on its segment's clock) and audio within the video's span,
    and stream-copies them; the result has Cues and a Duration.
    """
    path, output = Path(path), Path(output)
    try:
        container, vstream, astream, packets, _ = _read_input(path)
    except (av.error.FFmpegError, OSError, ValueError):
        return None
    try:
        if vstream is None:
            return None
        start = next((i for i, p in enumerate(packets) if p.stream is vstream and p.is_keyframe
                      and vp8.is_keyframe(bytes(p))), None)
        if start is None:
            return None
        packets = packets[start:]
        start_ms = _to_ms(packets[0].pts, packets[0].time_base)
        end = _video_end_ms(packets, vstream)
        if end is None:
            return None
        has_audio = astream is not None and any(p.stream is astream for p in packets)
        out = _CopyOut(output, vstream, astream if has_audio else None)
        try:
            out.copy(packets, vstream, 0, end, start_ms=start_ms)
        finally:
            out.close()
    finally:
        container.close()
    return probe(output)
