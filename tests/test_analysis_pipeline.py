"""A scripted synthetic candidate through the whole pipeline (signaling -> media node -> sampler -> detectors ->
rules -> Postgres + Redis + evidence): exactly the expected events, at the scripted media times, and no others."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import numpy as np
import pytest

from bench.synthetic import connect_sender, encode_clip, exam_room_audio
from media_server.node import MediaNode
from proctor.context import Context
from proctor.redis import LIVE_CHANNEL
from tests.support.media import empty_room, face_canvas, other_person_canvas
from tests.support.servers import RunningApp
from tests.support.sessions import create_session
from tests.support.waiting import wait_for

FPS = 30
# (from, to, what is in view): the enrolled candidate, nobody (an empty scene, not a covered camera), two people,
# and someone else in the candidate's seat.
SCRIPT = [(0.0, 5.0, "one"), (5.0, 11.0, "none"), (11.0, 17.0, "two"), (17.0, 21.0, "one"), (21.0, 31.0, "other"),
          (31.0, 38.0, "one")]
EXPECTED = {"no_face": (5.0, 11.0), "multiple_people": (11.0, 17.0), "identity_mismatch": (21.0, 31.0)}
# Frame kinds are sampled at 4 fps: an event starts at the first analysed frame that shows the condition. On an
# idle machine that is the first sampled frame (within 0.25 s); on a busy one the faces detector may still be on
# an earlier frame when the next is sampled, and a newer frame replaces the waiting one (analyzers/live.py), so
# the first analysed frame of a scene can come a few samples later (seen: 1.27 s with both cores busy and a VP8
# encoder running beside). Never before the change: that is what "exact" guarantees.
# Identity is checked every IDENTITY_INTERVAL_S (5 s by default), in an embedding process below the node's
# priority, and needs two failed checks in a row: idle, it starts at the first failed check and ends at the first
# passed one, each within one interval of the change; with both cores busy the checks fall behind (a newer frame
# replaces a waiting one), so all that is guaranteed is a start while the other person is in view and an end
# after the candidate is back, at the latest when the stream ends.
LATEST_S = {"no_face": (5.0 + 1.5, 11.0 + 1.5), "multiple_people": (11.0 + 1.5, 17.0 + 1.5),
            "identity_mismatch": (31.0, 38.0 + 0.5)}


def _scenes() -> dict[str, np.ndarray]:
    import cv2

    one = face_canvas()
    small = cv2.resize(one[:, 80:560], (320, 320), interpolation=cv2.INTER_AREA)
    two = np.full_like(one, 90)
    two[80:400, 0:320] = small
    two[80:400, 320:640] = small
    return {"one": one, "none": empty_room(), "two": two, "other": other_person_canvas()}


@pytest.mark.slow
async def test_scripted_video_produces_exactly_the_expected_events(
        web_server: RunningApp, media_node: MediaNode, admin_token: str, ctx: Context) -> None:
    from media_server.ice import install_host_addresses

    install_host_addresses(("127.0.0.1",))
    scenes = _scenes()
    frames = [scenes[what] for start, end, what in SCRIPT for _ in range(int((end - start) * FPS))]
    clip = await asyncio.to_thread(encode_clip, frames, FPS, 400_000, FPS)
    clip.audio = exam_room_audio(speech=False)  # the script is visual: this candidate says nothing

    session = await create_session(web_server.url, admin_token, candidate="Scripted Candidate")
    sid, token = session["id"], session["join_url"].rsplit("/", 1)[1]
    import io

    from PIL import Image

    photo = io.BytesIO()
    Image.fromarray(scenes["one"]).save(photo, format="JPEG")
    form = aiohttp.FormData()
    form.add_field("photo", photo.getvalue(), filename="ref.jpg", content_type="image/jpeg")
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
        async with http.post(f"{web_server.url}/api/sessions/{sid}/reference", data=form) as response:
            assert response.status == 201, await response.text()

    published: list[dict[str, Any]] = []
    pubsub = ctx.redis.pubsub()
    await pubsub.subscribe(LIVE_CHANNEL)

    async def listen() -> None:
        async for message in pubsub.listen():
            if message.get("type") == "message":
                data = json.loads(message["data"])
                if data.get("session_id") == sid and data.get("type") == "event":
                    published.append(data)

    listener = asyncio.create_task(listen())
    async with aiohttp.ClientSession() as http:
        pc = await connect_sender(clip, f"{web_server.url}/api/sessions/{sid}/offer", token, http)
        duration = SCRIPT[-1][1]
        await asyncio.sleep(duration + 0.3)  # the clip plays once, in real time
        await pc.close()

    async def settled() -> list[Any] | None:
        async with ctx.pool.acquire() as conn:
            rows = await conn.fetch("SELECT * FROM events WHERE session_id = $1 ORDER BY start_s", sid)
        return rows if rows and all(r["end_s"] is not None for r in rows) and sid not in media_node.streams \
            else None

    rows = await wait_for(settled, within=20)
    listener.cancel()
    await pubsub.unsubscribe(LIVE_CHANNEL)
    await pubsub.aclose()

    kinds = sorted(r["kind"] for r in rows)
    assert kinds == sorted(EXPECTED), [(r["kind"], r["start_s"], r["end_s"]) for r in rows]
    for row in rows:
        start, end = EXPECTED[row["kind"]]
        latest_start, latest_end = LATEST_S[row["kind"]]
        # Never before the change (the rules date an event by the frames that show it); how late: see LATEST_S.
        assert start - 0.5 <= row["start_s"] <= latest_start, (row["kind"], row["start_s"])
        assert end - 0.5 <= row["end_s"] <= latest_end, (row["kind"], row["end_s"])
        assert row["confidence"] > 0.5
        assert row["snapshot_key"] and await ctx.storage.exists(row["snapshot_key"])
    # Every start and end was published for the live monitor, with the ids stored.
    ids = {r["id"] for r in rows}
    assert {(m["action"], m["event"]["id"]) for m in published if m["action"] in ("start", "end")} == \
        {(action, i) for i in ids for action in ("start", "end")}
    stats = media_node.plugins[1].stats()
    # Measured, not bounded here: how fast an alert comes is a benchmark's figure (bench/latency.py, on an idle
    # machine), and with both cores busy a wall-clock bound fails for reasons that are not the pipeline's.
    assert stats["latency_ms"]["p95"] is not None
    print("frame -> published event latency ms:", stats["latency_ms"])
