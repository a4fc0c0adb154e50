"""Hardening of the media path (issue 19, items 7-10): atomic admission up to a node's capacity, no STUN sent to
addresses on the node's own side, offers without DTLS/ICE credentials refused, signed calls to a node's internal
API.

Real parts only: aiortc peers make their offers through the real offer route of a real web app to a real media
node. Each test that counts streams or watches a node's STUN runs its own web app and node on a Redis database of
its own (`Rig`), so no other node of the test run can take an offer and no other stream is counted.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import VideoStreamTrack

from bench.synthetic import AUDIO_TB, VIDEO_TB, EncodedClip, ReplayTrack, encode_clip
from core.offers import MAX_CANDIDATES, OfferError, check_offer, refusal, screen_candidates
from media_server.node import MediaNode
from proctor import nodeauth
from proctor.context import Context
from proctor.redis import connect as connect_redis
from proctor.settings import Settings
from tests.support.media import face_canvas
from tests.support.net import free_port, redis_url_with_db
from tests.support.sessions import create_session
from tests.support.waiting import wait_for

NO_ROOM = "no media node has room"


# --- a web app and a media node of their own -------------------------------------------------------------------

@dataclass
class Rig:
    settings: Settings
    ctx: Context
    node: MediaNode
    url: str  # the web app (REST, signaling)
    key: bytes  # node calls' signing key


@asynccontextmanager
async def rig(settings: Settings, ctx: Context, db: int, **overrides: Any) -> AsyncIterator[Rig]:
    """A web app and one media node sharing a Redis database nobody else uses (their own node registry)."""
    from web.app import create_app

    port = free_port()
    rig_settings = replace(settings, redis_url=redis_url_with_db(settings.redis_url, db), http_port=port,
                           public_base_url=f"http://127.0.0.1:{port}", **overrides)
    redis = connect_redis(rig_settings.redis_url)
    await redis.flushdb()
    rig_ctx = Context(rig_settings, ctx.pool, redis, ctx.storage)
    node = MediaNode(rig_ctx, [])
    node_runner = await node.start("127.0.0.1", free_port())

    async def registered() -> bool:
        return bool(await redis.exists(f"proctor:node:{node.node_id}"))

    await wait_for(registered, within=10)
    runner = web.AppRunner(create_app(rig_settings, ctx=rig_ctx), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield Rig(rig_settings, rig_ctx, node, f"http://127.0.0.1:{port}", nodeauth.node_key(rig_settings))
    finally:
        await runner.cleanup()
        await node.stop()
        await node_runner.cleanup()
        await redis.flushdb()
        await redis.aclose()


async def _sessions(base: str, admin_token: str, count: int) -> list[tuple[str, str]]:
    """(session id, join token) of `count` new sessions."""
    made = [await create_session(base, admin_token, candidate=f"Load {i}", exam="Capacity") for i in range(count)]
    return [(s["id"], s["join_url"].rsplit("/", 1)[1]) for s in made]


async def _offer_pc() -> tuple[RTCPeerConnection, str]:
    """A peer connection with a video track and a data channel, and its complete offer (candidates gathered)."""
    pc = RTCPeerConnection()
    pc.addTrack(VideoStreamTrack())
    pc.createDataChannel("signals")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


async def _post_offer(base: str, sid: str, token: str, sdp: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
        async with http.post(f"{base}/api/sessions/{sid}/offer", json={"sdp": sdp, "type": "offer"}) as r:
            return r.status, await r.json(content_type=None)


async def _node_offer(r: Rig, sid: str, sdp: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http:
        return await nodeauth.NodeClient(r.key, http).call(
            "POST", f"{r.node.url}/offer", {"session_id": sid, "sdp": sdp, "type": "offer"})


def max_streams(most: MaxStreams) -> str:
    return f"the node held up to {most.most} streams"


class MaxStreams(dict[str, Any]):
    """A node's `streams`, remembering the most it ever held: put in place of the node's own dict."""

    def __init__(self, node: MediaNode) -> None:
        super().__init__(node.streams)
        self.most = len(self)
        node.streams = self

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        self.most = max(self.most, len(self))


# --- 7. capacity: admission is atomic ----------------------------------------------------------------------------

CAPACITY = 3
BURST = 8


async def test_a_burst_of_offers_through_signaling_fills_a_node_exactly_to_capacity(
        settings: Settings, ctx: Context, admin_token: str) -> None:
    async with rig(settings, ctx, 9, media_node_capacity=CAPACITY) as r:
        sessions = await _sessions(r.url, admin_token, BURST)
        peers = await asyncio.gather(*(_offer_pc() for _ in sessions))
        try:
            most = MaxStreams(r.node)
            results = await asyncio.gather(*(_post_offer(r.url, sid, token, sdp)
                                             for (sid, token), (_, sdp) in zip(sessions, peers, strict=True)))
            await asyncio.sleep(1.5)  # a heartbeat later: nothing else arrives
            statuses = sorted(status for status, _ in results)
            assert statuses == [200] * CAPACITY + [503] * (BURST - CAPACITY), (statuses, max_streams(most))
            assert all(NO_ROOM in body["error"] for status, body in results if status == 503), results
            assert most.most <= CAPACITY and len(r.node.streams) == CAPACITY, (most.most, len(r.node.streams))

            # A session already on the full node reconnects (a page reload): it keeps its slot, no second one.
            placed = [sid_token for sid_token, (status, _) in zip(sessions, results, strict=True) if status == 200]
            sid, token = placed[0]
            pc, sdp = await _offer_pc()
            peers.append((pc, sdp))
            status, body = await _post_offer(r.url, sid, token, sdp)
            assert status == 200, body
            assert most.most <= CAPACITY and set(r.node.streams) == {s for s, _ in placed}
            # ... while a new session still finds no room.
            (new_sid, new_token), = await _sessions(r.url, admin_token, 1)
            pc, sdp = await _offer_pc()
            peers.append((pc, sdp))
            status, body = await _post_offer(r.url, new_sid, new_token, sdp)
            assert status == 503 and NO_ROOM in body["error"], body
        finally:
            await asyncio.gather(*(pc.close() for pc, _ in peers))


async def test_the_node_itself_refuses_beyond_capacity_under_concurrent_offers(
        settings: Settings, ctx: Context, admin_token: str) -> None:
    """Signed offers straight to the node, all at once (no signaling in front): exactly capacity get in."""
    async with rig(settings, ctx, 10, media_node_capacity=CAPACITY) as r:
        sessions = await _sessions(r.url, admin_token, BURST)
        peers = await asyncio.gather(*(_offer_pc() for _ in sessions))
        try:
            most = MaxStreams(r.node)
            results = await asyncio.gather(*(_node_offer(r, sid, sdp)
                                             for (sid, _), (_, sdp) in zip(sessions, peers, strict=True)))
            statuses = sorted(status for status, _ in results)
            assert statuses == [200] * CAPACITY + [503] * (BURST - CAPACITY), (statuses, max_streams(most))
            assert most.most <= CAPACITY and len(r.node.streams) == CAPACITY
        finally:
            await asyncio.gather(*(pc.close() for pc, _ in peers))


# --- 8. no STUN to addresses on the node's own side ---------------------------------------------------------------

def _with_candidates(sdp: str, hosts_ports: list[tuple[str, int]]) -> str:
    """The offer with its own candidates (and end-of-candidates) replaced by host candidates at these addresses,
    in every media section, at the highest priority."""
    lines = [line for line in sdp.splitlines() if not line.startswith(("a=candidate:", "a=end-of-candidates"))]
    out = []
    for line in lines:
        out.append(line)
        if line.startswith("a=mid:"):
            out += [f"a=candidate:x{i} 1 udp {2130706431 - i} {host} {port} typ host"
                    for i, (host, port) in enumerate(hosts_ports)]
            out.append("a=end-of-candidates")
    return "\r\n".join(out) + "\r\n"


class Listeners:
    """UDP sockets on loopback that count the datagrams (STUN checks) that reach them."""

    def __init__(self, count: int) -> None:
        self.socks = []
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.1", 0))
            sock.setblocking(False)
            self.socks.append(sock)
        self.ports = [s.getsockname()[1] for s in self.socks]
        self.received = 0

    def drain(self) -> int:
        for sock in self.socks:
            while True:
                try:
                    sock.recv(4096)
                except BlockingIOError:
                    break
                self.received += 1
        return self.received

    def close(self) -> None:
        for sock in self.socks:
            sock.close()


async def _reflection(settings: Settings, ctx: Context, admin_token: str, db: int, *, allow: bool,
                      watch_s: float) -> tuple[int, int]:
    """Offer (through signaling) a valid SDP whose candidates are 29 loopback ports and one mDNS name published
    for 127.0.0.1, each a listening UDP socket; (HTTP status, datagrams those sockets got within watch_s)."""
    from aioice import mdns

    listeners = Listeners(30)
    publisher = await mdns.create_mdns_protocol()
    name = mdns.create_mdns_hostname()
    await publisher.publish(name, "127.0.0.1")
    pc, sdp = await _offer_pc()
    try:
        async with rig(settings, ctx, db, ice_allow_private_candidates=allow) as r:
            (sid, token), = await _sessions(r.url, admin_token, 1)
            targets = [("127.0.0.1", port) for port in listeners.ports[:-1]] + [(name, listeners.ports[-1])]
            status, body = await _post_offer(r.url, sid, token, _with_candidates(sdp, targets))
            assert status == 200, body

            async def reached() -> bool:
                return listeners.drain() > 0

            try:
                await wait_for(reached, within=watch_s, interval=0.05)
            except AssertionError:
                pass
            return status, listeners.drain()
    finally:
        await pc.close()
        await publisher.close()
        listeners.close()


async def test_stun_goes_to_offered_loopback_candidates_when_private_addresses_are_allowed(
        settings: Settings, ctx: Context, admin_token: str) -> None:
    """The control for the next test: the sockets do see the node's checks when the setting lets them through."""
    status, received = await _reflection(settings, ctx, admin_token, 11, allow=True, watch_s=15)
    assert status == 200 and received > 0


async def test_no_stun_to_loopback_or_mdns_loopback_candidates_by_default(
        settings: Settings, ctx: Context, admin_token: str) -> None:
    assert Settings.defaults().ice_allow_private_candidates is False
    status, received = await _reflection(settings, ctx, admin_token, 12, allow=False, watch_s=4)
    assert status == 200
    assert received == 0, f"the node sent {received} datagrams to candidates it must have dropped"


async def test_an_offer_naming_too_many_candidates_is_refused(
        settings: Settings, ctx: Context, admin_token: str, web_server: Any, media_node: MediaNode) -> None:
    pc, sdp = await _offer_pc()
    try:
        # Distinct loopback addresses on the discard port: nothing listens there, whatever the node sends.
        too_many = _with_candidates(sdp, [(f"127.0.0.{1 + i}", 9) for i in range(MAX_CANDIDATES + 8)])
        (sid, token), = await _sessions(web_server.url, admin_token, 1)
        status, body = await _post_offer(web_server.url, sid, token, too_many)
        assert status == 400 and "candidate" in body["error"], body
        # The node refuses it too when called directly (signed).
        async with aiohttp.ClientSession() as http:
            status, body = await nodeauth.NodeClient(nodeauth.node_key(settings), http).call(
                "POST", f"{media_node.url}/offer", {"session_id": sid, "sdp": too_many, "type": "offer"})
        assert status == 400 and "candidate" in body["error"], body
        assert sid not in media_node.streams
        # At the cap exactly, the offer is fine.
        at_cap = _with_candidates(sdp, [(f"127.0.0.{1 + i}", 9) for i in range(MAX_CANDIDATES)])
        status, body = await _post_offer(web_server.url, sid, token, at_cap)
        assert status == 200, body
        async with aiohttp.ClientSession() as http:  # this peer never connects: let the shared node forget it
            await nodeauth.NodeClient(nodeauth.node_key(settings), http).call(
                "POST", f"{media_node.url}/sessions/{sid}/close")
    finally:
        await pc.close()


@pytest.fixture(scope="module")
async def clip() -> EncodedClip:
    return await asyncio.to_thread(encode_clip, [face_canvas()] * 30, 30, 300_000, 30)


async def test_a_loopback_peer_still_streams_with_private_candidates_dropped(
        settings: Settings, ctx: Context, admin_token: str, clip: EncodedClip) -> None:
    """Dropping the offer's own (loopback and private) candidates does not cut a real peer off: its checks reach
    the node, which answers to where they came from. So the default suits a laptop `proctor up` as well."""
    async with rig(settings, ctx, 13, ice_allow_private_candidates=False) as r:
        (sid, token), = await _sessions(r.url, admin_token, 1)
        pc = RTCPeerConnection()
        start = next(i for i, (_, key) in enumerate(clip.video) if key)
        pc.addTrack(ReplayTrack("video", [d for d, _ in clip.video], 1 / clip.fps, 90_000 // clip.fps, VIDEO_TB,
                                start))
        pc.addTrack(ReplayTrack("audio", clip.audio, 0.02, 960, AUDIO_TB))
        pc.createDataChannel("signals")
        try:
            await pc.setLocalDescription(await pc.createOffer())
            status, body = await _post_offer(r.url, sid, token, pc.localDescription.sdp)
            assert status == 200, body
            await pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type=body["type"]))

            async def streaming() -> bool:
                stream = r.node.streams.get(sid)
                return stream is not None and stream.first_frame.is_set()

            await wait_for(streaming, within=30)
        finally:
            await pc.close()


def test_candidate_addresses_the_node_refuses() -> None:
    refused = {"127.0.0.1": "loopback", "::1": "loopback", "::ffff:127.0.0.1": "loopback", "10.1.2.3": "private",
               "172.16.0.9": "private", "192.168.1.20": "private", "fd00::2": "private", "fe80::1": "link-local",
               "169.254.1.1": "link-local", "100.64.0.1": "private", "2002:c0a8:0101::1": "private",
               "64:ff9b::7f00:1": "loopback", "example.com": "not an IP address"}
    always = {"224.0.0.251": "multicast", "ff02::1": "multicast", "0.0.0.0": "unspecified", "::": "unspecified",
              "255.255.255.255": "broadcast"}
    for host, reason in {**refused, **always}.items():
        assert refusal(host, allow_private=False) == reason, host
    for host in refused:
        if host != "example.com":
            assert refusal(host, allow_private=True) is None, host
    for host, reason in always.items():
        assert refusal(host, allow_private=True) == reason, host
    for host in ("8.8.8.8", "2001:4860:4860::8888"):
        assert refusal(host, allow_private=False) is None


def test_mdns_candidates_are_kept_at_the_address_they_resolved_to_or_dropped() -> None:
    sdp = ("v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\n"
           "a=candidate:1 1 udp 100 pub.local 5000 typ host\r\n"
           "a=candidate:2 1 udp 99 lan.local 5001 typ host\r\n"
           "a=candidate:3 1 udp 98 gone.local 5002 typ host\r\n"
           "a=candidate:4 1 udp 97 8.8.4.4 5003 typ srflx raddr 0.0.0.0 rport 0\r\n"
           "a=end-of-candidates\r\n")
    screened, dropped = screen_candidates(sdp, allow_private=False,
                                          resolved={"pub.local": "8.8.8.8", "lan.local": "192.168.1.5"})
    assert "a=candidate:1 1 udp 100 8.8.8.8 5000 typ host" in screened
    assert "lan.local" not in screened and "gone.local" not in screened and "192.168.1.5" not in screened
    assert "8.8.4.4 5003" in screened
    assert "a=end-of-candidates" not in screened  # checks from the peer may still teach the node its address
    assert len(dropped) == 2
    # Allowed: untouched (aioice resolves mDNS names itself).
    assert screen_candidates(sdp, allow_private=True, resolved={}) == (sdp, [])


# --- 9. offers without DTLS fingerprint or ICE credentials ------------------------------------------------------

@pytest.mark.parametrize("attribute", ["a=fingerprint:", "a=ice-ufrag:", "a=ice-pwd:"])
async def test_an_offer_without_fingerprint_or_ice_credentials_is_refused(
        attribute: str, settings: Settings, admin_token: str, web_server: Any, media_node: MediaNode) -> None:
    pc, sdp = await _offer_pc()
    try:
        stripped = "\r\n".join(line for line in sdp.splitlines() if not line.startswith(attribute)) + "\r\n"
        with pytest.raises(OfferError):
            check_offer(stripped)
        (sid, token), = await _sessions(web_server.url, admin_token, 1)
        status, body = await _post_offer(web_server.url, sid, token, stripped)
        assert status == 400, body
        assert attribute.strip("a=:") in body["error"], body
        assert sid not in media_node.streams
        async with aiohttp.ClientSession() as http:  # defence in depth: the node checks too
            status, body = await nodeauth.NodeClient(nodeauth.node_key(settings), http).call(
                "POST", f"{media_node.url}/offer", {"session_id": sid, "sdp": stripped, "type": "offer"})
        assert status == 400 and attribute.strip("a=:") in body["error"], body
        assert sid not in media_node.streams
    finally:
        await pc.close()


# --- 10. the node's internal API needs a signature ---------------------------------------------------------------

async def test_unsigned_or_badly_signed_node_calls_get_401(
        settings: Settings, admin_token: str, web_server: Any, media_node: MediaNode) -> None:
    key = nodeauth.node_key(settings)
    assert key != settings.signing_key() and len(key) == 32
    (sid, _), = await _sessions(web_server.url, admin_token, 1)
    stats, close, offer = f"{media_node.url}/stats", f"{media_node.url}/sessions/{sid}/close", f"{media_node.url}/offer"
    body = b'{"session_id": "%s", "sdp": "v=0", "type": "offer"}' % sid.encode()

    def header(value: str) -> dict[str, str]:
        return {nodeauth.HEADER: value}

    def forged(k: bytes, method: str, path: str, data: bytes, t: int) -> str:
        message = "\n".join((method, path, str(t), hashlib.sha256(data).hexdigest()))
        return f"t={t},v1={hmac.new(k, message.encode(), hashlib.sha256).hexdigest()}"

    now = int(time.time())
    cases: list[tuple[str, str, bytes, dict[str, str]]] = [
        ("GET", stats, b"", {}),
        ("POST", close, b"", {}),
        ("POST", offer, body, {"Content-Type": "application/json"}),
        ("GET", stats, b"", header("garbage")),
        ("GET", stats, b"", header(f"t={now},v1=" + "0" * 64)),
        # The right scheme with the wrong key: the bare signing key (join links) instead of the derived node key.
        ("GET", stats, b"", header(forged(settings.signing_key(), "GET", "/stats", b"", now))),
        # Too old, and too far ahead.
        ("GET", stats, b"", header(nodeauth.sign(key, "GET", "/stats", b"", now=now - 120))),
        ("GET", stats, b"", header(nodeauth.sign(key, "GET", "/stats", b"", now=now + 120))),
        # A signature for another call: another path, another method, another body.
        ("POST", close, b"", header(nodeauth.sign(key, "GET", "/stats"))),
        ("POST", close, b"", header(nodeauth.sign(key, "GET", f"/sessions/{sid}/close"))),
        ("POST", offer, body, header(nodeauth.sign(key, "POST", "/offer", body.replace(b"v=0", b"v=1")))),
    ]
    async with aiohttp.ClientSession() as http:
        for method, url, data, headers in cases:
            async with http.request(method, url, data=data or None, headers=headers) as response:
                assert response.status == 401, (method, url, headers, response.status, await response.text())
        # Signed right, each call works.
        client = nodeauth.NodeClient(key, http)
        assert (await client.stats(media_node.url))["node_id"] == media_node.node_id
        status, answer = await client.call("POST", close)
        assert status == 200 and answer == {"closed": False}


def test_the_node_api_binds_to_loopback_by_default() -> None:
    assert Settings.defaults().media_node_host == "127.0.0.1"
