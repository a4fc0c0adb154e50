"""Byte-level WebM concatenation: whole Clusters copied as bytes, only their Timestamp rewritten.

A 2-hour master is ~600k packets; remuxing them through PyAV costs ~7 us each (4-5 s), nearly all of it
per-packet Python and muxer work on data that does not change. Block timecodes are relative to their
Cluster, so placing an input at +offset only needs each Cluster's Timestamp moved; the Cues come from the
inputs' own Cues (times moved, cluster positions remapped). Only the first and last Cluster of each input
are parsed block by block, to apply the same boundary rules as the PyAV path (archiver.webm.concat): audio
past the input's video end is dropped, and so is audio that would start before the previous input's audio
ended.

Anything outside what our own muxers write (unknown sizes, other time scales, tracks that differ between
inputs, no Cues, an input that must be cut because the next one starts inside it) raises Unsupported, and
the caller falls back to the PyAV remux, which handles every case.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from core import opus

EBML = 0x1A45DFA3
SEGMENT = 0x18538067
SEEK_HEAD = 0x114D9B74
SEEK = 0x4DBB
SEEK_ID = 0x53AB
SEEK_POSITION = 0x53AC
INFO = 0x1549A966
TIMESTAMP_SCALE = 0x2AD7B1
DURATION = 0x4489
MUXING_APP = 0x4D80
WRITING_APP = 0x5741
TRACKS = 0x1654AE6B
TRACK_ENTRY = 0xAE
TRACK_NUMBER = 0xD7
TRACK_TYPE = 0x83
CODEC_ID = 0x86
CODEC_PRIVATE = 0x63A2
DEFAULT_DURATION = 0x23E383
CLUSTER = 0x1F43B675
TIMESTAMP = 0xE7
SIMPLE_BLOCK = 0xA3
BLOCK_GROUP = 0xA0
BLOCK = 0xA1
BLOCK_DURATION = 0x9B
CUES = 0x1C53BB6B
CUE_POINT = 0xBB
CUE_TIME = 0xB3
CUE_TRACK_POSITIONS = 0xB7
CUE_TRACK = 0xF7
CUE_CLUSTER_POSITION = 0xF1
VOID = 0xEC
# Cluster children whose value would be wrong after a move: dropped (both are optional).
STALE_IN_CLUSTER = {0xA7, 0xAB}  # Position, PrevSize
VIDEO, AUDIO = 1, 2  # TrackType values
SEEK_HEAD_RESERVED = 200  # bytes kept for the output SeekHead (three entries, 8-byte sizes: ~130)


class Unsupported(Exception):
    """The inputs are not the simple kind this copier handles: use the PyAV remux."""


# --- EBML primitives ------------------------------------------------------------------------------------------
def read_vint(data: bytes | memoryview, pos: int, keep_marker: bool) -> tuple[int, int]:
    """(value, position after it) of the EBML variable-size integer at data[pos]."""
    first = data[pos]
    length = 1
    mask = 0x80
    while length <= 8 and not first & mask:
        mask >>= 1
        length += 1
    if length > 8 or pos + length > len(data):
        raise Unsupported("bad EBML vint")
    value = first if keep_marker else first & (mask - 1)
    for byte in data[pos + 1:pos + length]:
        value = (value << 8) | byte
    if not keep_marker and value == (1 << (7 * length)) - 1:
        raise Unsupported("element of unknown size")
    return value, pos + length


def elements(data: bytes | memoryview, start: int = 0, end: int | None = None) -> list[tuple[int, int, int]]:
    """(id, data start, data end) of each element in data[start:end]."""
    end = len(data) if end is None else end
    out = []
    pos = start
    while pos < end:
        eid, pos = read_vint(data, pos, keep_marker=True)
        size, pos = read_vint(data, pos, keep_marker=False)
        if pos + size > end:
            raise Unsupported("element runs past its parent")
        out.append((eid, pos, pos + size))
        pos += size
    return out


def encode_id(eid: int) -> bytes:
    return eid.to_bytes((eid.bit_length() + 7) // 8, "big")


def encode_size(size: int, width: int = 8) -> bytes:
    return ((1 << (7 * width)) | size).to_bytes(width, "big")


def element(eid: int, payload: bytes) -> bytes:
    return encode_id(eid) + encode_size(len(payload)) + payload


def uint(eid: int, value: int) -> bytes:
    return element(eid, value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big"))


def read_uint(data: bytes | memoryview) -> int:
    return int.from_bytes(data, "big")


# --- the same, from a file and leniently (webm.cue_points) -----------------------------------------------
def read_file_vint(f: BinaryIO, keep_marker: bool) -> tuple[int, int] | None:
    first = f.read(1)
    if not first:
        return None
    b = first[0]
    length = 1
    mask = 0x80
    while length <= 8 and not b & mask:
        mask >>= 1
        length += 1
    if length > 8:
        raise ValueError("bad EBML vint")
    rest = f.read(length - 1)
    if len(rest) != length - 1:
        return None
    value = b if keep_marker else b & (mask - 1)
    for byte in rest:
        value = (value << 8) | byte
    return value, length


def read_element(f: BinaryIO) -> tuple[int, int | None, int] | None:
    """(id, size or None if unknown, offset of the data) of the element at the file position."""
    eid = read_file_vint(f, keep_marker=True)
    size = read_file_vint(f, keep_marker=False) if eid else None
    if eid is None or size is None:
        return None
    value, length = size
    unknown = value == (1 << (7 * length)) - 1
    return eid[0], None if unknown else value, f.tell()


def children(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(id, payload) of each element in data, stopping quietly at the first truncated or unknown-size one: the
    lenient reader for checks that must answer on damaged files (elements() raises instead)."""
    f = io.BytesIO(data)
    while (element := read_element(f)) is not None:
        eid, size, start = element
        if size is None:
            return
        yield eid, data[start:start + size]
        f.seek(start + size)


# --- reading an input ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Track:
    number: int
    type: int
    codec: str
    private: bytes
    default_duration_ms: int


@dataclass
class Input:
    path: Path
    ebml_header: bytes
    tracks_element: bytes
    tracks: dict[int, Track]
    clusters: list[tuple[int, int]] = field(default_factory=list)  # (element start, element end) in the file
    cues: list[tuple[int, int]] = field(default_factory=list)  # (time ms, cluster position in segment data)
    segment_data_start: int = 0


def _read_exact(f: BinaryIO, offset: int, size: int) -> bytes:
    f.seek(offset)
    data = f.read(size)
    if len(data) != size:
        raise Unsupported("truncated input")
    return data


def _head(f: BinaryIO, offset: int) -> tuple[int, int, int]:
    """(id, data start, data end) of the element at `offset`, reading only its header."""
    f.seek(offset)
    try:
        element = read_element(f)
    except ValueError as exc:
        raise Unsupported(str(exc)) from None
    if element is None:
        raise Unsupported("truncated input")
    eid, size, start = element
    if size is None:
        raise Unsupported("element of unknown size")
    return eid, start, start + size


def _size(f: BinaryIO) -> int:
    return f.seek(0, io.SEEK_END)


def read_input(path: Path) -> Input:
    with open(path, "rb") as f:
        length = _size(f)
        eid, start, end = _head(f, 0)
        if eid != EBML:
            raise Unsupported("not EBML")
        ebml_header = _read_exact(f, 0, end)
        eid, seg_start, seg_end = _head(f, end)
        if eid != SEGMENT or seg_end > length:
            raise Unsupported("no complete Segment")
        info = tracks_element = None
        clusters: list[tuple[int, int]] = []
        cues_at = None
        pos = seg_start
        while pos < seg_end:
            eid, data_start, data_end = _head(f, pos)
            if data_end > seg_end:
                raise Unsupported("element past the Segment")
            if eid == INFO:
                info = _read_exact(f, data_start, data_end - data_start)
            elif eid == TRACKS:
                tracks_element = _read_exact(f, pos, data_end - pos)
            elif eid == CLUSTER:
                clusters.append((pos, data_end))
            elif eid == CUES:
                cues_at = (data_start, data_end)
            pos = data_end
        if info is None or tracks_element is None or cues_at is None or not clusters:
            raise Unsupported("Info, Tracks, Cues or Clusters missing")
        scale = next((read_uint(info[s:e]) for i, s, e in elements(info) if i == TIMESTAMP_SCALE), 1_000_000)
        if scale != 1_000_000:
            raise Unsupported(f"timestamp scale {scale}")
        cues = _read_cues(_read_exact(f, cues_at[0], cues_at[1] - cues_at[0]))
    return Input(path, ebml_header, tracks_element, _read_tracks(tracks_element), clusters, cues, seg_start)


def _read_tracks(tracks_element: bytes) -> dict[int, Track]:
    (eid, start, end), = elements(tracks_element)
    tracks = {}
    for eid, s, e in elements(tracks_element, start, end):
        if eid != TRACK_ENTRY:
            continue
        fields = {i: tracks_element[a:b] for i, a, b in elements(tracks_element, s, e)}
        number = read_uint(fields.get(TRACK_NUMBER, b"\0"))
        default_ns = read_uint(fields.get(DEFAULT_DURATION, b"\0"))
        tracks[number] = Track(number, read_uint(fields.get(TRACK_TYPE, b"\0")),
                               fields.get(CODEC_ID, b"").decode("ascii", "replace"),
                               bytes(fields.get(CODEC_PRIVATE, b"")), round(default_ns / 1_000_000))
    return tracks


def _read_cues(data: bytes) -> list[tuple[int, int]]:
    cues = []
    for eid, s, e in elements(data):
        if eid != CUE_POINT:
            continue
        time = position = None
        for i, a, b in elements(data, s, e):
            if i == CUE_TIME:
                time = read_uint(data[a:b])
            elif i == CUE_TRACK_POSITIONS:
                position = next((read_uint(data[x:y]) for j, x, y in elements(data, a, b)
                                 if j == CUE_CLUSTER_POSITION), None)
        if time is not None and position is not None:
            cues.append((time, position))
    return cues


# --- blocks ----------------------------------------------------------------------------------------------------
@dataclass
class Block:
    raw: bytes  # the whole child element (SimpleBlock or BlockGroup), copied as is when kept
    track: int
    time: int  # ms, input-relative (cluster timestamp + relative timecode)
    duration: int | None  # BlockDuration, if written


def cluster_blocks(data: bytes) -> tuple[int, list[Block]]:
    """(cluster timestamp, blocks) of a Cluster element's bytes."""
    _, pos, end = _first(data)
    timestamp = None
    blocks = []
    while pos < end:
        header_start = pos
        i, s, e = _child(data, pos)
        pos = e
        if i == TIMESTAMP:
            timestamp = read_uint(data[s:e])
        elif i in (SIMPLE_BLOCK, BLOCK_GROUP):
            if timestamp is None:
                raise Unsupported("block before the cluster Timestamp")
            block_at, duration = s, None
            if i == BLOCK_GROUP:
                parts = {j: (a, b) for j, a, b in elements(data, s, e)}
                if BLOCK not in parts:
                    raise Unsupported("BlockGroup without a Block")
                block_at = parts[BLOCK][0]
                if BLOCK_DURATION in parts:
                    duration = read_uint(data[parts[BLOCK_DURATION][0]:parts[BLOCK_DURATION][1]])
            track, at = read_vint(data, block_at, keep_marker=False)
            relative = struct.unpack_from(">h", data, at)[0]
            blocks.append(Block(data[header_start:e], track, timestamp + relative, duration))
        elif i not in STALE_IN_CLUSTER and i != VOID:
            raise Unsupported(f"cluster child {i:#x}")
    if timestamp is None:
        raise Unsupported("cluster without Timestamp")
    return timestamp, blocks


def _payload(block: Block) -> bytes:
    data = block.raw
    (eid, s, e), = elements(data)
    if eid == BLOCK_GROUP:
        s = next(a for j, a, b in elements(data, s, e) if j == BLOCK)
    _, pos = read_vint(data, s, keep_marker=False)
    flags = data[pos + 2]
    if flags & 0x06:
        raise Unsupported("laced block")
    return data[pos + 3:e]


def _cluster_bytes(timestamp: int, children: list[bytes]) -> bytes:
    return element(CLUSTER, uint(TIMESTAMP, timestamp) + b"".join(children))


# --- the copier ------------------------------------------------------------------------------------------------
@dataclass
class FastResult:
    duration_ms: int
    input_durations_ms: list[int]
    audio_dropped: int
    width: int
    height: int


def _template(inputs: list[Input]) -> Input:
    """The input whose Tracks the output uses: the first with the most tracks; others must be a subset."""
    template = max(inputs, key=lambda i: len(i.tracks))
    for other in inputs:
        for number, track in other.tracks.items():
            mine = template.tracks.get(number)
            if mine is None or (mine.type, mine.codec, mine.private) != (track.type, track.codec, track.private):
                raise Unsupported("inputs have different tracks")
    return template


def _video_track(template: Input) -> Track:
    videos = [t for t in template.tracks.values() if t.type == VIDEO]
    if len(videos) != 1:
        raise Unsupported("not exactly one video track")
    return videos[0]


def _video_end(f: BinaryIO, source: Input, video: Track) -> int:
    """Last video block's time + duration (BlockDuration, else DefaultDuration, else the step before it)."""
    for start, end in reversed(source.clusters):
        _, blocks = cluster_blocks(_read_exact(f, start, end - start))
        frames = [b for b in blocks if b.track == video.number]
        if frames:
            last = frames[-1]
            duration = last.duration if last.duration is not None else video.default_duration_ms
            if duration <= 0 and len(frames) > 1:
                duration = last.time - frames[-2].time
            return last.time + max(duration, 0)
    raise Unsupported("no video frames")


def _dimensions(tracks_element: bytes, video: Track) -> tuple[int, int]:
    (eid, start, end), = elements(tracks_element)
    for i, s, e in elements(tracks_element, start, end):
        fields = {j: (a, b) for j, a, b in elements(tracks_element, s, e)}
        if i == TRACK_ENTRY and read_uint(tracks_element[slice(*fields[TRACK_NUMBER])]) == video.number:
            if 0xE0 in fields:
                size = {j: read_uint(tracks_element[a:b]) for j, a, b in elements(tracks_element, *fields[0xE0])}
                return size.get(0xB0, 0), size.get(0xBA, 0)
    return 0, 0


def concat_clusters(paths: list[Path], output: Path, starts_ms: list[int] | None = None) -> FastResult:
    """Same contract as archiver.webm.concat for inputs that need no cutting; raises Unsupported otherwise."""
    inputs = [read_input(Path(p)) for p in paths]
    template = _template(inputs)
    video = _video_track(template)
    audio_numbers = {n for n, t in template.tracks.items() if t.type == AUDIO}
    ends = []
    for source in inputs:
        with open(source.path, "rb") as f:
            ends.append(_video_end(f, source, video))
    offsets = _offsets(ends, starts_ms)
    header_size = 12  # Segment id (4) + 8-byte size
    dropped = 0
    last_audio_end = 0.0
    with open(output, "wb") as out:
        out.write(template.ebml_header)
        segment_at = out.tell()
        out.write(encode_id(SEGMENT) + encode_size(0))
        data_start = segment_at + header_size
        seek_head_at = out.tell()
        out.write(element(VOID, bytes(SEEK_HEAD_RESERVED - 9)))
        info_at = out.tell()
        out.write(_info(0.0))
        tracks_at = out.tell()
        out.write(template.tracks_element)
        cues: list[tuple[int, int]] = []
        for source, offset, end in zip(inputs, offsets, ends, strict=True):
            remap: dict[int, int] = {}
            with open(source.path, "rb") as f:
                last = len(source.clusters) - 1
                for c, (start, stop) in enumerate(source.clusters):
                    raw = _read_exact(f, start, stop - start)
                    remap[start - source.segment_data_start] = out.tell() - data_start
                    if c == 0 or c == last:  # boundaries: apply the audio rules block by block
                        timestamp, blocks = cluster_blocks(raw)
                        kept = []
                        for block in blocks:
                            if block.track in audio_numbers:
                                if block.time >= end or block.time + offset < last_audio_end:
                                    dropped += 1
                                    continue
                                last_audio_end = block.time + offset + max(opus.packet_duration_ms(_payload(block)), 1)
                            elif block.time >= end:
                                raise Unsupported("video past the input's end")
                            kept.append(block.raw)
                        out.write(_cluster_bytes(timestamp + offset, kept))
                    else:
                        if _cluster_time(raw) >= end:  # audio-only tail clusters: not our files' shape
                            raise Unsupported("a middle cluster starts past the video's end")
                        out.write(_moved_cluster(raw, offset))
            cues += [(time + offset, remap[position]) for time, position in source.cues if position in remap]
        cues_at = out.tell()
        out.write(_cues(cues, video.number))
        segment_end = out.tell()
        duration = offsets[-1] + ends[-1]
        out.seek(segment_at)
        out.write(encode_id(SEGMENT) + encode_size(segment_end - data_start))
        out.seek(seek_head_at)
        out.write(_seek_head([(INFO, info_at - data_start), (TRACKS, tracks_at - data_start),
                              (CUES, cues_at - data_start)]))
        out.seek(info_at)
        out.write(_info(float(duration)))
    width, height = _dimensions(template.tracks_element, video)
    return FastResult(duration, [max(e, 0) for e in ends], dropped, width, height)


def _offsets(ends: list[int], starts_ms: list[int] | None) -> list[int]:
    if starts_ms is None:
        offsets, at = [], 0
        for end in ends:
            offsets.append(at)
            at += max(end, 0)
        return offsets
    for i in range(len(ends) - 1):
        if starts_ms[i] + ends[i] > starts_ms[i + 1]:
            raise Unsupported("an input runs past the next one's start (needs cutting)")
    return list(starts_ms)


def _moved_cluster(raw: bytes, offset: int) -> bytes:
    """The Cluster with its Timestamp moved by `offset`; everything after the Timestamp copied in one slice."""
    _, start, end = _first(raw)
    cid, s, e = _child(raw, start)
    if cid != TIMESTAMP:  # our muxers write it first; anything else gets the careful path
        raise Unsupported("cluster does not start with its Timestamp")
    if e < end and _child(raw, e)[0] in STALE_IN_CLUSTER:
        raise Unsupported("Position/PrevSize in cluster")
    return _cluster_bytes(read_uint(raw[s:e]) + offset, [raw[e:end]])


def _cluster_time(raw: bytes) -> int:
    _, start, _ = _first(raw)
    cid, s, e = _child(raw, start)
    return read_uint(raw[s:e]) if cid == TIMESTAMP else -1


def _first(raw: bytes) -> tuple[int, int, int]:
    eid, pos = read_vint(raw, 0, keep_marker=True)
    size, pos = read_vint(raw, pos, keep_marker=False)
    if pos + size != len(raw):
        raise Unsupported("cluster size mismatch")
    return eid, pos, pos + size


def _child(raw: bytes, pos: int) -> tuple[int, int, int]:
    eid, p = read_vint(raw, pos, keep_marker=True)
    size, p = read_vint(raw, p, keep_marker=False)
    return eid, p, p + size


def _info(duration_ms: float) -> bytes:
    return element(INFO, uint(TIMESTAMP_SCALE, 1_000_000) + element(MUXING_APP, b"proctor mkvcat")
                   + element(WRITING_APP, b"proctor mkvcat") + element(DURATION, struct.pack(">d", duration_ms)))


def _seek_head(entries: list[tuple[int, int]]) -> bytes:
    body = b"".join(element(SEEK, element(SEEK_ID, encode_id(eid)) + uint(SEEK_POSITION, position))
                    for eid, position in entries)
    head = element(SEEK_HEAD, body)
    if len(head) > SEEK_HEAD_RESERVED - 9:
        raise Unsupported("SeekHead does not fit")
    return head + element(VOID, bytes(SEEK_HEAD_RESERVED - len(head) - 9))


def _cues(cues: list[tuple[int, int]], video_track: int) -> bytes:
    points = []
    for time, position in sorted(set(cues)):
        points.append(element(CUE_POINT, uint(CUE_TIME, time) + element(
            CUE_TRACK_POSITIONS, uint(CUE_TRACK, video_track) + uint(CUE_CLUSTER_POSITION, position))))
    return element(CUES, b"".join(points))
