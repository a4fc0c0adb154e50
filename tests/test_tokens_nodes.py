"""Unit tests: join tokens (signature, expiry, binding) and the choice of media node; SDP answer tuning."""

from __future__ import annotations

import time

import pytest

from core import tokens
from core.nodes import NodeInfo, choose
from media_server.sdp import tune_answer

KEY = b"k" * 40


def test_token_round_trip() -> None:
    token = tokens.issue(KEY, "sid-1", "nonce-1", time.time() + 60)
    claims = tokens.verify(KEY, token)
    assert (claims.session_id, claims.nonce) == ("sid-1", "nonce-1")


@pytest.mark.parametrize("mangle", [
    lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),  # forged signature
    lambda t: "x" + t,  # payload changed
    lambda t: t.replace(".", ""),  # no separator
    lambda t: t + ".x",  # two separators
    lambda t: "",
    lambda t: "a" * 600 + "." + "b",  # absurdly long
])
def test_token_tampering_is_refused(mangle) -> None:  # type: ignore[no-untyped-def]
    token = tokens.issue(KEY, "sid-1", "nonce-1", time.time() + 60)
    with pytest.raises(tokens.TokenError):
        tokens.verify(KEY, mangle(token))


def test_token_other_key_and_expiry() -> None:
    token = tokens.issue(KEY, "sid-1", "n", time.time() + 60)
    with pytest.raises(tokens.TokenError, match="invalid"):
        tokens.verify(b"other" * 10, token)
    expired = tokens.issue(KEY, "sid-1", "n", time.time() - 1)
    with pytest.raises(tokens.TokenError, match="expired"):
        tokens.verify(KEY, expired)
    assert tokens.verify(KEY, expired, now=time.time() - 120).session_id == "sid-1"


def _node(node_id: str, streams: int, capacity: int = 10, cpu: float = 0.0) -> NodeInfo:
    return NodeInfo(node_id, f"http://{node_id}", streams, capacity, cpu)


def test_choose_least_loaded_with_room() -> None:
    nodes = [_node("a", 5), _node("b", 2), _node("c", 9, capacity=20)]
    assert choose(nodes).node_id == "b"  # type: ignore[union-attr]
    assert choose([_node("a", 10), _node("b", 10)]) is None  # all full
    assert choose([]) is None
    # Equal load: the less busy CPU wins, then a stable order.
    assert choose([_node("a", 2, cpu=80), _node("b", 2, cpu=10)]).node_id == "b"  # type: ignore[union-attr]


def test_choose_prefers_previous_node_while_it_has_room() -> None:
    nodes = [_node("a", 5), _node("b", 1)]
    assert choose(nodes, prefer="a").node_id == "a"  # type: ignore[union-attr]
    assert choose([_node("a", 10), _node("b", 1)], prefer="a").node_id == "b"  # type: ignore[union-attr]
    assert choose(nodes, prefer="gone").node_id == "b"  # type: ignore[union-attr]


OFFERISH_ANSWER = "\r\n".join([
    "v=0", "o=- 1 1 IN IP4 0.0.0.0", "s=-", "t=0 0",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111", "c=IN IP4 0.0.0.0", "a=rtpmap:111 opus/48000/2",
    "a=fmtp:111 minptime=10;useinbandfec=1",
    "m=video 9 UDP/TLS/RTP/SAVPF 96 97", "c=IN IP4 0.0.0.0", "a=rtpmap:96 VP8/90000",
    "a=rtpmap:97 rtx/90000", "a=fmtp:97 apt=96", "",
])


def test_tune_answer_sets_bitrate_on_video_only() -> None:
    tuned = tune_answer(OFFERISH_ANSWER, 1200)
    assert "a=fmtp:96 x-google-start-bitrate=1200;x-google-min-bitrate=600;x-google-max-bitrate=1200" in tuned
    assert "a=fmtp:111 minptime=10;useinbandfec=1\r\n" in tuned  # audio untouched
    assert "a=fmtp:97 apt=96\r\n" in tuned  # rtx untouched
    video = tuned.split("m=video", 1)[1]
    assert "b=AS:1200" in video and "b=AS" not in tuned.split("m=video", 1)[0]
    assert tune_answer(tuned, 1200).count("x-google-start-bitrate") == 1  # idempotent


def test_media_clock_guards_timestamp_jumps() -> None:
    from media_server.stream import MediaClock

    clock = MediaClock(base_s=10.0)
    assert clock.media_time(1000) == 10.0
    assert clock.media_time(1000 + 3000) == pytest.approx(10.0 + 1 / 30)
    # A backwards step of more than a second is refused (it would read as a 13-hour wrap).
    assert clock.media_time(1000 - 200_000) is None
    # A forward jump of an hour is taken as one frame: the timeline stays continuous.
    t = clock.media_time(4000 + 90_000 * 3600)
    assert t == pytest.approx(10.0 + 2 / 30, abs=0.001)
    assert clock.refused == 2
    assert clock.media_time(4000 + 90_000 * 3600 + 3000) == pytest.approx(10.0 + 3 / 30, abs=0.001)
    assert clock.end_s == pytest.approx(10.0 + 4 / 30, abs=0.001)


async def test_a_burst_of_offers_spreads_over_nodes(ctx) -> None:  # type: ignore[no-untyped-def]
    """Reservations count until the next heartbeat, so a burst alternates between equally loaded nodes."""
    from proctor.store.nodes import RESERVED, live_nodes, register, reserve

    prefix = f"burst-{time.time_ns()}"
    for name in ("a", "b"):
        await register(ctx.redis, NodeInfo(f"{prefix}-{name}", "http://x", 0, 100))
    chosen = []
    for index in range(6):
        nodes = [n for n in await live_nodes(ctx.redis) if n.node_id.startswith(prefix)]
        node = choose(nodes)
        assert node is not None
        chosen.append(node.node_id[-1])
        assert await reserve(ctx.redis, node.node_id, f"{prefix}-session-{index}") == RESERVED
    assert chosen.count("a") == 3 and chosen.count("b") == 3
