"""MEDIA_UDP_PORTS: every UDP socket a media node's ICE opens is bound inside the configured range.

aioice binds each host candidate's socket to port 0 (any port), which no firewall rule or Kubernetes hostPort can
name; media_server/aiortc_compat.py's `install_udp_port_range` makes those binds (and the TURN client's socket)
land in the range. The first tests drive the hook through a real aioice Connection and fail if aioice changes how
it binds; the last run a real `proctor media` process with three concurrent aiortc peers and read its sockets
from the kernel (psutil), then exhaust the range (503, never a 500) and close everything (ports released).
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest
from aioice import Connection
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import VideoStreamTrack

from media_server import aiortc_compat
from media_server.aiortc_compat import PortRangeExhausted, UdpPortRange
from proctor import nodeauth
from proctor.redis import connect as connect_redis
from proctor.settings import Settings
from tests.support.net import free_port, redis_url_with_db
from tests.support.servers import RunningApp
from tests.support.sessions import create_session
from tests.support.udp_ports import free_udp_range, port_range
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent
CANDIDATE = re.compile(r"^a=candidate:\S+ (\d) (udp|tcp) \d+ (\S+) (\d+) typ (\w+)", re.MULTILINE | re.IGNORECASE)


def _occupy(ports: list[int], host: str = "0.0.0.0") -> list[socket.socket]:
    """UDP sockets holding `ports` on `host`; on 0.0.0.0 any later bind of them on any IPv4 address fails."""
    held = []
    for port in ports:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind((host, port))
        except OSError:  # another process took it meanwhile: taken either way
            sock.close()
            continue
        held.append(sock)
    return held


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


# --- the hook, through real aioice ------------------------------------------------------------------------------


async def test_aioice_host_candidates_bind_inside_the_range() -> None:
    first, last = free_udp_range(20)
    previous = aiortc_compat.extra_host_addresses()
    aiortc_compat.install_host_addresses(("127.0.0.1",))
    connections = [Connection(ice_controlling=True, use_ipv6=False) for _ in range(3)]
    try:
        with port_range((first, last)):
            await asyncio.gather(*(c.gather_candidates() for c in connections))
        ports = [c.port for conn in connections for c in conn.local_candidates]
        assert ports and all(first <= p <= last for p in ports), (ports, first, last)
        # One port number per connection, on each of its host addresses; never shared by two connections.
        numbers = [{c.port for c in conn.local_candidates} for conn in connections]
        assert all(len(n) == 1 for n in numbers) and len(set.union(*numbers)) == 3, numbers
        bound = [p.transport.get_extra_info("sockname")[1] for conn in connections for p in conn._protocols]
        assert sorted(bound) == sorted(ports)
        print(f"host addresses gathered: {sorted({c.host for c in connections[0].local_candidates})}; "
              f"{len(ports) // 3} UDP socket(s) per connection, port numbers {numbers}")
    finally:
        for conn in connections:
            await conn.close()
        aiortc_compat.install_host_addresses(previous)
    assert all(_bindable(p) for p in ports)  # released at close


async def test_without_a_range_aioice_binds_as_before() -> None:
    with port_range(None):
        connection = Connection(ice_controlling=True, use_ipv6=False)
        try:
            await connection.gather_candidates()
            assert connection.local_candidates
        finally:
            await connection.close()


async def test_a_full_range_fails_the_gathering_and_releases_what_it_bound() -> None:
    """Each port is taken per address: (127.0.0.1, p) and (127.0.0.2, p) are different sockets. Every port of the
    range held on 127.0.0.2 only: the other host addresses bind, then 127.0.0.2 (gathered last) finds none. The
    gathering fails with PortRangeExhausted (not an OSError, which aioice would swallow into an answer with no
    candidates) and the ports it did take for the other addresses are free again."""
    first, last = free_udp_range(3)
    held = _occupy(list(range(first, last + 1)), "127.0.0.2")
    previous = aiortc_compat.extra_host_addresses()
    aiortc_compat.install_host_addresses(("127.0.0.1", "127.0.0.2"))
    connection = Connection(ice_controlling=True, use_ipv6=False)
    try:
        with port_range((first, last)), pytest.raises(PortRangeExhausted, match=f"{first}-{last}"):
            await connection.gather_candidates()
    finally:
        await connection.close()
        aiortc_compat.install_host_addresses(previous)
        for sock in held:
            sock.close()
    assert all(_bindable(p) for p in range(first, last + 1))


async def test_one_port_number_serves_every_host_address() -> None:
    """A one-port range still gathers on every host address: the range bounds peer connections, not candidates."""
    first, last = free_udp_range(1)
    previous = aiortc_compat.extra_host_addresses()
    aiortc_compat.install_host_addresses(("127.0.0.1", "127.0.0.2"))
    connection = Connection(ice_controlling=True, use_ipv6=False)
    try:
        with port_range((first, last)):
            await connection.gather_candidates()
        hosts = {c.host for c in connection.local_candidates}
        assert {"127.0.0.1", "127.0.0.2"} <= hosts
        assert {c.port for c in connection.local_candidates} == {first}
    finally:
        await connection.close()
        aiortc_compat.install_host_addresses(previous)


def test_bind_searches_on_from_the_last_port_handed_out() -> None:
    first, last = free_udp_range(4)
    ports = UdpPortRange(first, last)
    socks = [aiortc_compat.bind_udp_in_range("127.0.0.1", ports) for _ in range(4)]
    try:
        assert sorted(s.getsockname()[1] for s in socks) == list(range(first, last + 1))
        with pytest.raises(PortRangeExhausted):
            aiortc_compat.bind_udp_in_range("127.0.0.1", ports)
        freed = socks.pop(1)
        freed_port = freed.getsockname()[1]
        freed.close()
        again = aiortc_compat.bind_udp_in_range("127.0.0.1", ports)
        socks.append(again)
        assert again.getsockname()[1] == freed_port
    finally:
        for sock in socks:
            sock.close()


def test_the_setting_parses_a_range_and_refuses_nonsense() -> None:
    from proctor.settings import SettingsError

    assert Settings.from_env({"MEDIA_UDP_PORTS": "50000-50999"}, env_file=None).media_udp_ports == (50000, 50999)
    assert Settings.from_env({"MEDIA_UDP_PORTS": ""}, env_file=None).media_udp_ports is None
    for bad in ("50999-50000", "80-90", "50000-70000", "a-b", "50000-", "50000:50010"):
        with pytest.raises(SettingsError, match="MEDIA_UDP_PORTS"):
            Settings.from_env({"MEDIA_UDP_PORTS": bad}, env_file=None)


# --- a real media node process -----------------------------------------------------------------------------------


@dataclass
class NodeProcess:
    process: subprocess.Popen[bytes]
    url: str
    ports: tuple[int, int]
    key: bytes
    log: Path

    def udp_ports(self) -> list[int]:
        """Local ports of every UDP socket (IPv4 and IPv6) the node process has open now."""
        conns = psutil.Process(self.process.pid).net_connections(kind="udp")
        return sorted(c.laddr.port for c in conns)

    def in_range(self, port: int) -> bool:
        return self.ports[0] <= port <= self.ports[1]


def _spawn_node(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "proctor", "media"], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT)


def _stop_node(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


REDIS_DB = 13  # the node's own registry: no signaling of the suite places offers on it


@pytest.fixture(scope="module")
async def node_process(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[NodeProcess]:
    ports = free_udp_range(30)
    api_port = free_port()
    redis_url = redis_url_with_db(settings.redis_url, REDIS_DB)
    redis = connect_redis(redis_url)
    await redis.flushdb()
    log = tmp_path_factory.mktemp("node") / "node.log"
    env = {**os.environ, "DATABASE_URL": settings.database_url, "REDIS_URL": redis_url,
           "SECRET_KEY": settings.secret_key, "PROCTOR_DATA_DIR": str(settings.data_dir),
           "MEDIA_NODE_HOST": "127.0.0.1", "MEDIA_NODE_PORT": str(api_port),
           "MEDIA_UDP_PORTS": f"{ports[0]}-{ports[1]}", "ICE_HOST_ADDRESSES": "127.0.0.1",
           "ICE_ALLOW_PRIVATE_CANDIDATES": "true", "ANALYZERS": "faces", "SEGMENT_SECONDS": "2"}
    process = _spawn_node(env, log)
    node = NodeProcess(process, f"http://127.0.0.1:{api_port}", ports, nodeauth.node_key(settings), log)
    try:
        async def registered() -> bool:
            assert process.poll() is None, log.read_text()[-3000:]
            return bool(await redis.keys("proctor:node:*"))

        await wait_for(registered, within=90, interval=0.3)
        yield node
    finally:
        _stop_node(process)
        await redis.flushdb()
        await redis.aclose()


async def _node_call(node: NodeProcess, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http:
        return await nodeauth.NodeClient(node.key, http).call(method, f"{node.url}{path}", body)


async def _peer() -> tuple[RTCPeerConnection, str]:
    pc = RTCPeerConnection()
    pc.addTrack(VideoStreamTrack())
    pc.createDataChannel("signals")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


@pytest.mark.slow  # a real `proctor media` process (starts in ~10-30 s)
async def test_node_candidates_and_sockets_stay_in_the_range_and_are_released(
        node_process: NodeProcess, web_server: RunningApp, admin_token: str) -> None:
    node = node_process
    sessions = [await create_session(web_server.url, admin_token, candidate=f"Port {i}", exam="Ports")
                for i in range(3)]
    peers = await asyncio.gather(*(_peer() for _ in sessions))
    try:
        results = await asyncio.gather(*(_node_call(node, "POST", "/offer", {"session_id": s["id"], "sdp": sdp,
                                                                             "type": "offer"})
                                         for s, (_, sdp) in zip(sessions, peers, strict=True)))
        for status, body in results:
            assert status == 200, body
        answer_ports = []
        per_pc: list[set[tuple[str, int]]] = []
        for (_, body), (pc, _) in zip(results, peers, strict=True):
            candidates = CANDIDATE.findall(body["sdp"])
            assert candidates, body["sdp"]
            answer_ports += [int(port) for _, _, _, port, _ in candidates]
            per_pc.append({(host, int(port)) for _, _, host, port, _ in candidates})
            await pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type="answer"))
        assert all(node.in_range(p) for p in answer_ports), (answer_ports, node.ports)

        async def all_connected() -> bool:
            return all(pc.connectionState == "connected" for pc, _ in peers)

        await wait_for(all_connected, within=30)
        open_ports = node.udp_ports()
        outside = [p for p in open_ports if not node.in_range(p)]
        assert not outside, f"UDP sockets outside {node.ports}: {outside} (all: {open_ports})"
        assert set(answer_ports) <= set(open_ports)
        print(f"3 peer connections: {len(open_ports)} UDP sockets open in the node, all in "
              f"{node.ports[0]}-{node.ports[1]}; per connection (host, port): {[sorted(c) for c in per_pc]}")
        # One port number per connection (on each host address), a different one for each connection.
        numbers = [{port for _, port in c} for c in per_pc]
        assert all(len(n) == 1 for n in numbers) and len(set.union(*numbers)) == 3, numbers
    finally:
        for pc, _ in peers:
            await pc.close()
        for s in sessions:
            await _node_call(node, "POST", f"/sessions/{s['id']}/close")

    async def released() -> bool:
        return not any(node.in_range(p) for p in node.udp_ports())

    await wait_for(released, within=30, interval=0.3)


@pytest.mark.slow  # a real `proctor media` process (starts in ~10-30 s)
async def test_a_full_range_refuses_the_offer_with_503_and_the_node_carries_on(
        node_process: NodeProcess, web_server: RunningApp, admin_token: str) -> None:
    node = node_process
    await wait_for(lambda: _no_node_ports(node), within=30, interval=0.3)
    first, last = node.ports
    held = _occupy(list(range(first, last + 1)))
    session = await create_session(web_server.url, admin_token, candidate="Port full", exam="Ports")
    pc, sdp = await _peer()
    try:
        status, body = await _node_call(node, "POST", "/offer", {"session_id": session["id"], "sdp": sdp,
                                                                 "type": "offer"})
        assert status == 503, body
        assert f"{first}-{last}" in body["error"] and "port" in body["error"]
        assert node.process.poll() is None
        assert not [p for p in node.udp_ports() if node.in_range(p)]  # nothing half-bound left behind
    finally:
        for sock in held:
            sock.close()
    # Ports free again: the same session gets in.
    try:
        status, body = await _node_call(node, "POST", "/offer", {"session_id": session["id"], "sdp": sdp,
                                                                 "type": "offer"})
        assert status == 200, body
        assert all(node.in_range(int(m[3])) for m in CANDIDATE.findall(body["sdp"]))
    finally:
        await pc.close()
        await _node_call(node, "POST", f"/sessions/{session['id']}/close")


async def _no_node_ports(node: NodeProcess) -> bool:
    return not any(node.in_range(p) for p in node.udp_ports())
