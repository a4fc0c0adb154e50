"""A dependency outage as a user meets it: Redis stopped for a while -> clear 503s (never a 500), /healthz
says which server is down, and everything works again when it is back, without a restart by hand."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import aiohttp
from aiohttp import web

from proctor.context import Context
from proctor.embedded import EmbeddedRedis
from proctor.redis import FINALIZE_STREAM, connect
from tests.support.net import free_port


async def test_redis_outage_gives_503_and_recovers(ctx: Context, tmp_path: Path, admin_token: str) -> None:
    from web.app import create_app

    server = EmbeddedRedis(tmp_path / "redis")
    url = await asyncio.to_thread(server.start)
    redis = connect(url)
    port = free_port()
    settings = replace(ctx.settings, redis_url=url, http_port=port, public_base_url=f"http://127.0.0.1:{port}")
    app = create_app(settings, ctx=Context(settings, ctx.pool, redis, ctx.storage))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    base = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {admin_token}"}
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/api/sessions", json={"candidate": "c", "exam": "e"}, headers=auth) as r:
                session = await r.json()
            token = session["join_url"].rsplit("/", 1)[1]
            # Complete enough for signaling's checks (ICE credentials, DTLS fingerprint), so it asks for a node.
            offer = {"sdp": "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=ice-ufrag:abcd\r\n"
                            "a=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=fingerprint:sha-256 " + ":".join(["AB"] * 32)
                            + "\r\n", "type": "offer"}

            await asyncio.to_thread(server.stop)  # Redis goes away
            async with http.get(f"{base}/healthz") as r:
                assert r.status == 503 and (await r.json())["redis"]["status"] == "error"
            async with http.post(f"{base}/api/sessions/{session['id']}/offer", json=offer,
                                 headers={"Authorization": f"Bearer {token}"}) as r:
                assert r.status == 503 and r.headers["Retry-After"] == "2"
                assert "temporarily unavailable" in (await r.json())["error"]
            # What does not need Redis keeps working.
            async with http.get(f"{base}/api/sessions/{session['id']}", headers=auth) as r:
                assert r.status == 200
            # Ending needs Redis (tell the node, queue the finalize): refused and rolled back, so it can be retried.
            async with http.post(f"{base}/api/sessions/{session['id']}/end", headers=auth) as r:
                assert r.status == 503
            async with http.get(f"{base}/api/sessions/{session['id']}", headers=auth) as r:
                assert (await r.json())["status"] != "ended"

            await asyncio.to_thread(server.start)  # back, same data dir
            for _ in range(50):
                async with http.get(f"{base}/healthz") as r:
                    health = await r.json()
                    if health["redis"]["status"] == "ok":
                        break
                await asyncio.sleep(0.2)
            # Redis is back, but no media node registered in this one: "starting" until a node is live.
            assert health["redis"]["status"] == "ok" and health["database"]["status"] == "ok", health
            assert r.status == 503 and health["status"] == "starting" and health["ready"] is False, health
            async with http.post(f"{base}/api/sessions/{session['id']}/offer", json=offer,
                                 headers={"Authorization": f"Bearer {token}"}) as r:
                # Signaling works again: this Redis has no media node registered, and it says so.
                assert r.status == 503 and "no media node" in (await r.json())["error"]
            async with http.post(f"{base}/api/sessions/{session['id']}/end", headers=auth) as r:
                assert r.status in (200, 202)
            assert [fields["session_id"] for _, fields in await redis.xrange(FINALIZE_STREAM)] == [session["id"]]
    finally:
        await runner.cleanup()
        await redis.aclose()
        await asyncio.to_thread(server.stop)


async def test_postgres_outage_gives_503_and_recovers(ctx: Context, tmp_path: Path, admin_token: str) -> None:
    from proctor import db, migrate
    from proctor.accounts import create_token, create_user
    from proctor.embedded import EmbeddedPostgres
    from web.app import create_app

    pg = EmbeddedPostgres(tmp_path / "pg")
    url = await asyncio.to_thread(pg.start)
    await asyncio.to_thread(migrate.upgrade, url)
    pool = await db.create_pool(url, max_size=4)
    async with pool.acquire() as conn:
        await create_user(conn, "outage-admin", "admin", "long enough pw")
        token = await create_token(conn, "outage-admin")
    port = free_port()
    settings = replace(ctx.settings, database_url=url, http_port=port)
    runner = web.AppRunner(create_app(settings, ctx=Context(settings, pool, ctx.redis, ctx.storage)), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    base, auth = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {token}"}
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/api/sessions", headers=auth) as r:
                assert r.status == 200
            await asyncio.to_thread(pg.stop)  # Postgres goes away
            for path in ("/api/sessions", "/healthz"):
                async with http.get(base + path, headers=auth) as r:
                    assert r.status == 503, (path, r.status, await r.text())
            await asyncio.to_thread(pg.start)  # back, same data
            statuses = []
            for _ in range(30):
                async with http.get(f"{base}/api/sessions", headers=auth) as r:
                    statuses.append(r.status)
                    if r.status == 200:
                        break
                await asyncio.sleep(0.2)
            assert statuses[-1] == 200 and 500 not in statuses
    finally:
        await runner.cleanup()
        await pool.close()
        await asyncio.to_thread(pg.stop)
