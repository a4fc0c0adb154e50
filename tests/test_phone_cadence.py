"""The phone detector's adaptive cadence (analyzers/phone.py PhoneCadence, PHONE_ADAPTIVE): the real bundled
NanoDet and the real phone rule (core.rules) on real photos, frames delivered as the node's frame sampler delivers
them (media_server/decode.py FrameSampler._due at the detector's fps, on the 7.5 fps of a VP8 base layer).

Photos (bench/quality/data, labels and provenance there): Obama close up without and with a phone composited in his
hand (NanoDet scores the phone 0.65-0.74 in every noisy frame, the clean picture's best "phone" box 0.08-0.23),
and the same with the phone on a desk (0.46-0.53). scikit-image's astronaut twice side by side: two persons.
"""

from __future__ import annotations

import asyncio
import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import cv2
import numpy as np
import pytest

from analyzers.base import Signal, rules_config
from analyzers.phone import JITTER, PhoneDetector
from bench.quality.clips import letterbox
from bench.synthetic import connect_sender, encode_clip
from core.rules import EventChange, EventRules
from media_server.node import MediaNode
from proctor.context import Context
from proctor.settings import Settings
from tests.support.servers import RunningApp
from tests.support.sessions import create_session
from tests.support.waiting import wait_for

DATA = Path(__file__).resolve().parent.parent / "bench" / "quality" / "data"
BASE_FPS = 7.5  # what the sampler sees with temporal layers (half of 15 fps in L1T2, a quarter of 30 in L1T3)
GRID = 1 / BASE_FPS
TICK_S = 0.5


def _photo(name: str) -> np.ndarray:
    return letterbox(cv2.cvtColor(cv2.imread(str(DATA / name)), cv2.COLOR_BGR2RGB))


def _variants(image: np.ndarray, count: int = 4, seed: int = 0) -> list[np.ndarray]:
    """A few noisy, slightly moved copies, so the model never sees the same pixels twice in a row."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        moved = np.roll(image.astype(np.int16), int(4 * np.sin(i)), axis=1)
        frame = np.clip(moved + rng.integers(-10, 11, image.shape), 0, 255).astype(np.uint8)
        frame.flags.writeable = False
        out.append(frame)
    return out


@pytest.fixture(scope="module")
def scenes() -> dict[str, list[np.ndarray]]:
    from skimage import data

    two = cv2.resize(np.hstack([data.astronaut(), data.astronaut()[:, ::-1]]), (640, 320))
    two_people = np.full((480, 640, 3), 90, np.uint8)
    two_people[80:400] = two
    return {"clean": _variants(_photo("cu_obama_65.jpg")), "phone": _variants(_photo("phone_cu_obama_65.jpg")),
            "desk": _variants(_photo("phone_obama_desk.jpg")), "two": _variants(two_people)}


@pytest.fixture(scope="module")
def models_home(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("models"))  # nothing fetched there: the bundled NanoDet runs


def _settings(models_home: str, **overrides: object) -> Settings:
    return Settings.defaults(deepface_home=models_home, **overrides)


@dataclass
class Run:
    delivered: list[float] = field(default_factory=list)  # frames the sampler handed to the phone slot
    scans: list[float] = field(default_factory=list)  # the frames analysed
    positive: list[float] = field(default_factory=list)  # scans with a phone that counts
    changes: list[tuple[float, EventChange]] = field(default_factory=list)  # (media time it came at, change)

    def events(self) -> list[EventChange]:
        return [c for _, c in self.changes if c.type == "start"]

    def started_at(self, change: EventChange) -> float:
        return next(at for at, c in self.changes if c is change)


def stream(detector: PhoneDetector, script: list[tuple[float, str]], scenes: dict[str, list[np.ndarray]],
           hints: Callable[[float], list[Signal]] | None = None) -> Run:
    """Play `script` ([(seconds, scene name), ...]) to the detector as a media node does: the sampler's due check
    at detector.fps on a 7.5 fps grid, `wants` for each delivered frame, `analyze`, the rules, a tick every 0.5 s.
    `hints(t)`: other detectors' signals at a base-layer frame (they sample more often than the phone slot)."""
    rules = EventRules(rules_config(Settings.defaults()))
    run = Run()
    timeline = []
    for seconds, name in script:
        timeline += [name] * round(seconds * BASE_FPS)
    next_due, next_tick = 0.0, TICK_S
    for i, name in enumerate(timeline):
        t = i * GRID
        for signal in hints(t) if hints else []:
            detector.hint(signal, t)
        if t + 1e-6 >= next_due:  # FrameSampler._due
            period = 1.0 / detector.fps
            next_due = max(next_due + period, t - period)
            run.delivered.append(t)
            if detector.wants(t):
                frames = scenes[name]
                signals = detector.analyze(frames[len(run.scans) % len(frames)], t)
                run.scans.append(t)
                for signal in signals:
                    if signal.kind == "phone" and signal.active:
                        run.positive.append(t)
                    run.changes += [(t, c) for c in rules.update(signal.kind, signal.active, signal.confidence, t,
                                                                 signal.details, source=signal.source)]
        while t + 1e-6 >= next_tick:
            run.changes += [(t, c) for c in rules.tick(t)]
            next_tick += TICK_S
    end = len(timeline) * GRID
    run.changes += [(end, c) for c in rules.flush(end)]
    return run


def _detector(models_home: str, seed: int | None = 0, **overrides: object) -> PhoneDetector:
    detector = PhoneDetector(_settings(models_home, **overrides))
    detector.load()
    if seed is not None and detector.cadence is not None:
        detector.cadence.rng.seed(seed)
    return detector


# --- the cost: scans on a stream with nothing to see ------------------------------------------------------------
def test_a_clean_stream_is_scanned_every_interval_on_average_with_jitter(
        models_home: str, scenes: dict[str, list[np.ndarray]]) -> None:
    seconds = 150.0
    runs = [stream(_detector(models_home, seed=None), [(seconds, "clean")], scenes) for _ in range(2)]
    settings = Settings.defaults()
    interval = settings.phone_interval_s
    for run in runs:
        gaps = np.diff(run.scans)
        # ~60 / PHONE_INTERVAL_S a minute (20 at 3 s), against 60 at the fixed 1 fps: the sampler still delivers
        # every second, the cadence scans one frame in ~3.
        per_minute = 60 * len(run.scans) / seconds
        assert 0.8 * 60 / interval <= per_minute <= 1.2 * 60 / interval, (per_minute, run.scans)
        assert len(run.delivered) >= 0.95 * seconds * settings.phone_fps
        assert not run.events() and not run.positive
        # Jittered: each gap from 0.5x to 1.5x the interval (to the nearest delivered frame), and they vary.
        slack = 0.5 / settings.phone_fps + GRID
        assert (1 - JITTER) * interval - slack <= gaps.min() and gaps.max() <= (1 + JITTER) * interval + slack, gaps
        assert statistics.pstdev(gaps) > 0.15 * interval, gaps
        assert abs(float(gaps.mean()) - interval) < 0.2 * interval, gaps
    # Per stream: two streams (each its own detector, seeded from the system's entropy) keep different schedules.
    assert runs[0].scans[1:6] != runs[1].scans[1:6]


def test_phone_adaptive_off_scans_every_frame_at_phone_fps(
        models_home: str, scenes: dict[str, list[np.ndarray]]) -> None:
    detector = _detector(models_home, phone_adaptive=False)
    assert detector.cadence is None
    run = stream(detector, [(30.0, "clean")], scenes)
    assert run.scans == run.delivered and len(run.scans) >= 29


# --- a phone in view ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(5))
def test_a_phone_held_for_8_s_is_flagged_from_its_first_positive_frame(
        models_home: str, scenes: dict[str, list[np.ndarray]], seed: int) -> None:
    settings = Settings.defaults()
    fps, interval = settings.phone_fps, settings.phone_interval_s
    on, off = 20.0 + seed * 0.7, 28.0 + seed * 0.7  # the phone appears at another phase of the schedule each time
    run = stream(_detector(models_home, seed=seed), [(on, "clean"), (8.0, "phone"), (12.0, "clean")], scenes)
    events = run.events()
    assert len(events) == 1, [(c.type, c.start_s, c.end_s) for _, c in run.changes]
    event = events[0]
    first_positive = run.positive[0]
    # The flag is dated by the first frame that saw the phone, as at a fixed rate (core.rules: the first vote).
    assert event.start_s == first_positive and on <= first_positive
    # The first scan after the phone appears comes within the longest drawn interval (1.5x, to the nearest
    # delivered frame); that scan starts a burst at PHONE_FPS, and the rule's 3 votes need 2 more frames.
    first_scan_by = on + (1 + JITTER) * interval + 0.5 / fps + GRID
    assert first_positive <= first_scan_by
    confirm_by = first_scan_by + 2 / fps + 2 * GRID
    assert run.started_at(event) <= confirm_by, (run.started_at(event), confirm_by, run.scans)
    assert confirm_by - on <= 8.0  # so a phone held for 8 s is always flagged while still in view
    # While the phone is in view every frame is scanned (the burst goes on while it is seen), and the flag ends at
    # the first clear frame after it.
    in_view = [t for t in run.delivered if first_positive <= t < off]
    assert set(in_view) <= set(run.scans)
    end_s = next(c.end_s for _, c in run.changes if c.type == "end")
    assert end_s is not None and off <= end_s <= off + 1 / fps + GRID


def test_one_positive_scan_starts_a_burst_but_never_an_event(
        models_home: str, scenes: dict[str, list[np.ndarray]]) -> None:
    """A glimpse: the phone is in the first frame only (the first frame is always scanned)."""
    detector = _detector(models_home)
    run = stream(detector, [(0.5, "phone"), (20.0, "clean")], scenes)
    assert run.positive == [0.0]
    assert not run.events()  # the rule votes: one sample never starts a phone flag
    assert detector.cadence is not None and detector.cadence.bursts == 1
    burst = [t for t in run.scans if t <= detector.cadence.burst_s + 1e-6]
    assert burst == [t for t in run.delivered if t <= detector.cadence.burst_s + 1e-6]  # every frame for BURST_S
    after = [t for t in run.scans if t > detector.cadence.burst_s + 1.0]
    assert len(after) <= len(run.delivered) / 2  # then back to the interval


def test_two_persons_start_a_burst(models_home: str, scenes: dict[str, list[np.ndarray]]) -> None:
    detector = _detector(models_home)
    run = stream(detector, [(12.0, "clean"), (3.0, "two"), (12.0, "clean")], scenes)
    assert detector.cadence is not None and detector.cadence.bursts == 1
    first_two = next(t for t in run.scans if 12.0 <= t < 15.0)
    following = [t for t in run.delivered if first_two <= t <= first_two + detector.cadence.burst_s]
    assert set(following) <= set(run.scans)


def test_a_weak_phone_box_starts_a_burst_once_per_cooldown(
        models_home: str, scenes: dict[str, list[np.ndarray]]) -> None:
    """PHONE_CONF 0.6 puts the desk phone (0.46-0.53) between the hint (0.42) and a vote: every scan sees a hint,
    none a phone; one burst, then the interval again until the cooldown (4 intervals) is over."""
    detector = _detector(models_home, phone_conf=0.6)
    run = stream(detector, [(20.0, "desk")], scenes)
    cadence = detector.cadence
    assert cadence is not None
    assert not run.positive and not run.events()
    assert cadence.bursts == 2  # at 0 s and once the cooldown ended (12 s), not at every scan
    burst = [t for t in run.delivered if t <= cadence.burst_s + 1e-6]
    assert set(burst) <= set(run.scans)
    assert len(run.scans) < len(run.delivered) * 0.8


def test_another_detectors_hint_brings_the_next_scan_forward(
        models_home: str, scenes: dict[str, list[np.ndarray]]) -> None:
    interval = 4.0
    seed = next(s for s in range(100) if random.Random(s).uniform(1 - JITTER, 1 + JITTER) > 1.4)
    plain = stream(_detector(models_home, seed=seed, phone_interval_s=interval), [(8.0, "clean")], scenes)
    assert plain.scans[1] >= 1.4 * interval - 0.5 - GRID  # this seed draws a long first interval
    # The faces detector loses the face at 0.5 s (and keeps reporting it): one prompt, at half an interval.
    looked_away = stream(_detector(models_home, seed=seed, phone_interval_s=interval), [(8.0, "clean")], scenes,
                         hints=lambda t: [Signal("no_face", t >= 0.5, 0.9)])
    assert looked_away.scans[1] <= 0.5 * interval + 0.5 + GRID
    assert looked_away.scans[1] >= 0.5 * interval - 0.5 - GRID  # never sooner than half an interval
    # A condition that stays on prompts once (its rising edge), not at every frame of it.
    assert len(looked_away.scans) <= len(plain.scans) + 1


# --- through a media node: sampler -> phone slot (wants) -> detector -> rules -> Postgres ------------------------
PIPELINE = [(0.0, 20.0, "clean"), (20.0, 28.0, "phone"), (28.0, 35.0, "clean")]


@pytest.mark.slow
async def test_a_media_node_scans_at_the_cadence_and_flags_the_phone(
        web_server: RunningApp, media_node: MediaNode, admin_token: str, ctx: Context,
        scenes: dict[str, list[np.ndarray]]) -> None:
    """A synthetic candidate (aiortc sender, VP8 with temporal layers as Chromium sends) with a phone in view from
    20 s to 28 s: the node's phone slot analyses about one delivered frame in three while nothing is in view, every
    one in the burst, and the phone flag starts within the cadence's bound, dated by a frame that shows it."""
    from media_server.ice import install_host_addresses

    install_host_addresses(("127.0.0.1",))
    fps = 30
    frames = [scenes[what][i % 4] for start, end, what in PIPELINE for i in range(int((end - start) * fps))]
    clip = await asyncio.to_thread(encode_clip, frames, fps, 600_000, fps, True)
    session = await create_session(web_server.url, admin_token, candidate="Phone Candidate")
    sid, token = session["id"], session["join_url"].rsplit("/", 1)[1]
    analysis = media_node.plugins[1]
    async with aiohttp.ClientSession() as http:
        pc = await connect_sender(clip, f"{web_server.url}/api/sessions/{sid}/offer", token, http)
        await asyncio.sleep(19.5)  # the clean lead-in
        clean = analysis.stats()["streams"][sid]["phone"]
        await asyncio.sleep(PIPELINE[-1][1] - 19.5 - 0.5)
        stats = analysis.stats()["streams"][sid]["phone"]
        await pc.close()
    print("phone slot after the clean lead-in:", clean, "at the end:", stats)

    async def settled() -> list[Any] | None:
        async with ctx.pool.acquire() as conn:
            rows = await conn.fetch("SELECT * FROM events WHERE session_id = $1 AND kind = 'phone'", sid)
        return rows if rows and all(r["end_s"] is not None for r in rows) and sid not in media_node.streams \
            else None

    rows = await wait_for(settled, within=30)
    settings = Settings.defaults()
    assert len(rows) == 1, [(r["start_s"], r["end_s"]) for r in rows]
    # Never before the phone (the first frame that shows it); at the latest the first scan after the longest drawn
    # interval, plus a frame of the 7.5 fps base layer and up to two frames replaced while the model was busy.
    latest = 20.0 + (1 + JITTER) * settings.phone_interval_s + 0.5 / settings.phone_fps + 3 * GRID
    assert 20.0 - 0.5 <= rows[0]["start_s"] <= latest, rows[0]["start_s"]
    assert 28.0 - 0.5 <= rows[0]["end_s"] <= 35.0
    # The phone slot gets a frame a second; over the clean lead-in the cadence scanned about one in three (20 s:
    # ~7, or up to 5 more for one burst on a weak box), and the analyses kept up with the scans it chose (what
    # admission by load reads: media_server/admission.py analysis_rate).
    assert clean["fps"] == settings.phone_fps
    assert 2 <= clean["cadence"]["scans"] <= 0.75 * 20.0 * settings.phone_fps, clean
    assert stats["cadence"]["bursts"] >= 1 and stats["cadence"]["scans"] > clean["cadence"]["scans"]
    assert stats["analysed"] <= stats["cadence"]["scans"] <= stats["analysed"] + 2
