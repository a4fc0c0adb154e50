"""TURN with short-lived credentials (the TURN REST API scheme) against a real coturn (Debian package).

core/turn.py derives `username = "<expiry>:<session id>"`, `credential = base64(HMAC-SHA1(secret, username))`;
coturn started with `--use-auth-secret --static-auth-secret` recomputes it. Checked here: the derivation against a
vector computed independently (`openssl dgst -sha1 -hmac`), coturn granting an allocation to a derived credential
and refusing an expired or wrongly signed one, the media node's and the join page's ICE configuration, and the
TURN client socket of a node bound inside MEDIA_UDP_PORTS.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from collections.abc import Iterator

import aiohttp
import psutil
import pytest
from aioice import Connection

from core import turn
from media_server import aiortc_compat
from media_server.ice import node_rtc_configuration
from proctor.context import Context
from proctor.settings import Settings, SettingsError
from tests.support.coturn import Coturn, have_coturn
from tests.support.servers import RunningApp, own_web_app
from tests.support.sessions import create_session
from tests.support.udp_ports import free_udp_range, port_range

needs_coturn = pytest.mark.skipif(not have_coturn(), reason="Debian coturn not installed (make system)")


# --- the derivation ----------------------------------------------------------------------------------------------


def test_credential_matches_an_independently_computed_vector() -> None:
    # printf '%s' "1700000000:session-42" | openssl dgst -sha1 -hmac "north-wind" -binary | base64
    cred = turn.turn_credential("north-wind", "session-42", now=1_699_996_400, ttl_s=3600)
    assert cred.username == "1700000000:session-42"
    assert cred.credential == "0VekynYidCOy02dbcGcqnUXbncY="
    assert cred.expires_at == 1_700_000_000


def test_ice_servers_keep_the_static_ones_and_add_turn_only_when_configured() -> None:
    static = ({"urls": "stun:stun.example.org:3478"},)
    assert turn.ice_servers(static, (), "s", "sid", 0, 60) == [{"urls": "stun:stun.example.org:3478"}]
    assert turn.ice_servers(static, ("turn:t:3478",), "", "sid", 0, 60) == [{"urls": "stun:stun.example.org:3478"}]
    servers = turn.ice_servers(static, ("turn:t:3478", "turn:t:3478?transport=tcp"), "s", "sid", 100, 60)
    assert servers[0] == static[0]
    assert servers[1]["urls"] == ["turn:t:3478", "turn:t:3478?transport=tcp"]
    assert servers[1]["username"] == "160:sid"


def test_turn_settings_are_checked() -> None:
    with pytest.raises(SettingsError, match="TURN_SECRET"):
        Settings.from_env({"TURN_URLS": "turn:turn.example.org:3478"}, env_file=None)
    with pytest.raises(SettingsError, match="TURN_URLS"):
        Settings.from_env({"TURN_URLS": "stun:x:3478", "TURN_SECRET": "s"}, env_file=None)
    with pytest.raises(SettingsError, match="ICE_TRANSPORT_POLICY"):
        Settings.from_env({"ICE_TRANSPORT_POLICY": "none"}, env_file=None)
    s = Settings.from_env({"TURN_URLS": "turn:a:3478, turns:a:5349", "TURN_SECRET": "hush"}, env_file=None)
    assert s.turn_urls == ("turn:a:3478", "turns:a:5349") and s.turn_ttl_s == 86400
    assert "hush" not in repr(s)


def test_the_node_configuration_gets_a_fresh_credential_per_session() -> None:
    s = Settings.defaults(ice_servers=({"urls": "stun:stun.example.org:3478"},),
                          turn_urls=("turn:127.0.0.1:3478",), turn_secret="hush", turn_ttl_s=600)
    config = node_rtc_configuration(s, "abc", now=1000)
    assert [server.urls for server in config.iceServers] == ["stun:stun.example.org:3478", ["turn:127.0.0.1:3478"]]
    relay = config.iceServers[1]
    assert relay.username == "1600:abc"
    assert relay.credential == base64.b64encode(hmac.new(b"hush", b"1600:abc", hashlib.sha1).digest()).decode()


# --- against a real coturn ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def coturn() -> Iterator[Coturn]:
    if not have_coturn():
        pytest.skip("Debian coturn not installed (make system)")
    with Coturn() as server:
        yield server


async def _relay_candidates(server: Coturn, username: str, password: str) -> list[str]:
    connection = Connection(ice_controlling=True, use_ipv6=False, turn_server=("127.0.0.1", server.port),
                            turn_username=username, turn_password=password, turn_transport="udp")
    try:
        await connection.gather_candidates()
        return [f"{c.host}:{c.port}" for c in connection.local_candidates if c.type == "relay"]
    finally:
        await connection.close()


@needs_coturn
async def test_coturn_grants_a_derived_credential_and_refuses_expired_or_forged_ones(coturn: Coturn) -> None:
    good = turn.turn_credential(coturn.secret, "sess-good", time.time(), 600)
    relays = await _relay_candidates(coturn, good.username, good.credential)
    assert len(relays) == 1 and relays[0].startswith("127.0.0.1:"), relays
    port = int(relays[0].split(":")[1])
    assert coturn.relay_ports[0] <= port <= coturn.relay_ports[1]

    expired = turn.turn_credential(coturn.secret, "sess-expired", time.time() - 7200, 600)
    assert await _relay_candidates(coturn, expired.username, expired.credential) == []
    forged = turn.turn_credential("not-the-secret", "sess-forged", time.time(), 600)
    assert await _relay_candidates(coturn, forged.username, forged.credential) == []

    log = coturn.log()
    assert re.search(r"user <\d+:sess-good>.*ALLOCATE processed, success", log), log[-3000:]
    assert not re.search(r"user <\d+:sess-(expired|forged)>.*ALLOCATE processed, success", log)


@needs_coturn
async def test_the_turn_client_socket_binds_inside_media_udp_ports(coturn: Coturn) -> None:
    first, last = free_udp_range(10)
    cred = turn.turn_credential(coturn.secret, "sess-ports", time.time(), 600)
    connection = Connection(ice_controlling=True, use_ipv6=False, turn_server=("127.0.0.1", coturn.port),
                            turn_username=cred.username, turn_password=cred.credential, turn_transport="udp")
    try:
        with port_range((first, last)):
            await connection.gather_candidates()
        assert any(c.type == "relay" for c in connection.local_candidates)
        towards_turn = [c for c in psutil.Process().net_connections(kind="udp")
                        if c.raddr and c.raddr.port == coturn.port]
        assert towards_turn and all(first <= c.laddr.port <= last for c in towards_turn), towards_turn
        hosts = [c.port for c in connection.local_candidates if c.type == "host"]
        assert hosts and all(first <= p <= last for p in hosts)
    finally:
        await connection.close()
    assert aiortc_compat.udp_port_range() is None


# --- the join page ----------------------------------------------------------------------------------------------


async def test_the_join_page_carries_a_fresh_turn_credential_and_the_policy(
        settings: Settings, ctx: Context, web_server: RunningApp, admin_token: str) -> None:
    async with own_web_app(settings, ctx, turn_urls=("turn:127.0.0.1:3478",), turn_secret="page-secret-123",
                           turn_ttl_s=900, ice_transport_policy="relay") as base:
        session = await create_session(base, admin_token)
        before = int(time.time())
        async with aiohttp.ClientSession() as http, http.get(session["join_url"]) as r:
            assert r.status == 200
            html = await r.text()
        after = int(time.time())
    assert "page-secret-123" not in html
    config = json.loads(re.search(r'<script[^>]*id="config"[^>]*>(.*?)</script>', html, re.S).group(1))
    assert config["iceTransportPolicy"] == "relay"
    [server] = [s for s in config["iceServers"] if s["urls"] == ["turn:127.0.0.1:3478"]]
    expiry, who = server["username"].split(":", 1)
    assert who == session["id"] and before + 900 <= int(expiry) <= after + 900
    expected = base64.b64encode(hmac.new(b"page-secret-123", server["username"].encode(), hashlib.sha1).digest())
    assert server["credential"] == expected.decode()
    # Defaults: no TURN entry, policy "all".
    async with aiohttp.ClientSession() as http, http.get(
            (await create_session(web_server.url, admin_token))["join_url"]) as r:
        html = await r.text()
    config = json.loads(re.search(r'<script[^>]*id="config"[^>]*>(.*?)</script>', html, re.S).group(1))
    assert config["iceTransportPolicy"] == "all" and config["iceServers"] == list(settings.ice_servers)

