"""/healthz reports database, Redis, storage, models and media nodes (the detail to staff: these calls carry an
API token; tests/test_security_web.py checks what it tells anyone else); a dead dependency gives 503, and so does
a system with no live media node yet ("starting": no candidate could be taken)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from aiohttp import web
from alembic.script import ScriptDirectory

from proctor import migrate
from proctor.context import Context
from proctor.redis import connect
from proctor.settings import Settings
from tests.support.net import free_port
from tests.support.servers import RunningApp


async def test_healthz_ok(web_server: RunningApp, admin_token: str, media_node: Any) -> None:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {admin_token}"}) as http, \
            http.get(f"{web_server.url}/healthz") as response:
        assert response.status == 200
        body = await response.json()
    assert body["status"] == "ok" and body["ready"] is True and "reason" not in body
    head = ScriptDirectory.from_config(migrate.alembic_config("postgresql://unused")).get_current_head()
    assert body["database"]["status"] == "ok" and body["database"]["revision"] == head  # alembic head
    assert body["redis"]["status"] == "ok"
    assert body["storage"] == {**body["storage"], "status": "ok", "backend": "local"}
    assert set(body["models"]) == {"faces", "gaze", "identity", "phone"}
    assert body["models"]["faces"]["status"] == "ok"
    # No PHONE_MODEL_PATH and nothing fetched: the bundled NanoDet runs, and says how weak it is.
    assert body["models"]["phone"]["status"] == "ok"
    assert body["models"]["phone"]["detail"].startswith("bundled NanoDet-m 416")
    assert "weak" in body["models"]["phone"]["detail"]
    assert media_node.node_id in {node["node_id"] for node in body["media_nodes"]}


async def test_healthz_reports_dead_redis(settings: Settings, ctx: Context, admin_token: str) -> None:
    from web.app import create_app

    dead = connect(f"redis://127.0.0.1:{free_port()}/0")
    broken = Context(settings, ctx.pool, dead, ctx.storage)
    port = free_port()
    runner = web.AppRunner(create_app(replace(settings, http_port=port), ctx=broken))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {admin_token}"}) as http, \
                http.get(f"http://127.0.0.1:{port}/healthz") as response:
            assert response.status == 503
            body = await response.json()
        assert body["status"] == "error" and body["ready"] is False and body["reason"] == "unavailable: redis"
        assert body["redis"]["status"] == "error" and "Connection" in body["redis"]["error"]
        assert body["database"]["status"] == "ok"
    finally:
        await runner.cleanup()
        await dead.aclose()


async def _serve(settings: Settings, ctx: Context) -> tuple[web.AppRunner, str]:
    from web.app import create_app

    port = free_port()
    runner = web.AppRunner(create_app(replace(settings, http_port=port), ctx=ctx))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


async def test_healthz_is_starting_until_a_media_node_is_live(settings: Settings, ctx: Context,
                                                              admin_token: str) -> None:
    """Database, Redis and storage up but no media node registered (a Redis database of its own, so the suite's
    node is not seen): 503 "starting", not ready, for anyone; ready once a node's heartbeat is in the registry,
    and starting again once it is gone (a load balancer must not send candidates to a system that cannot take
    them)."""
    from core.nodes import NodeInfo
    from proctor.store.nodes import register, unregister

    alone = aioredis.Redis.from_url(settings.redis_url, db=9, decode_responses=True)
    await alone.flushdb()
    runner, base = await _serve(settings, Context(settings, ctx.pool, alone, ctx.storage))
    staff = {"Authorization": f"Bearer {admin_token}"}
    try:
        async with aiohttp.ClientSession() as http:
            for headers in ({}, staff):
                async with http.get(f"{base}/healthz", headers=headers) as response:
                    assert response.status == 503
                    assert response.headers["Cache-Control"] == "no-store"
                    body = await response.json()
                assert body["status"] == "starting" and body["ready"] is False, body
                assert "no media node" in body["reason"]
                assert body["database"]["status"] == body["redis"]["status"] == "ok"
            # A node's heartbeat, as media_server/node.py writes it through the registry.
            await register(alone, NodeInfo("healthz-node", "http://127.0.0.1:9", 0, 4))
            async with http.get(f"{base}/healthz", headers=staff) as response:
                body = await response.json()
                assert response.status == 200, body
            assert body["status"] == "ok" and body["ready"] is True
            assert [node["node_id"] for node in body["media_nodes"]] == ["healthz-node"]
            await unregister(alone, "healthz-node")
            async with http.get(f"{base}/healthz") as response:
                assert response.status == 503 and (await response.json())["status"] == "starting"
    finally:
        await runner.cleanup()
        await alone.flushdb()
        await alone.aclose()


async def test_media_targets_tell_prometheus_where_the_nodes_are(settings: Settings, ctx: Context) -> None:
    """Prometheus HTTP service discovery (deploy/prometheus/prometheus.yml): the live nodes' internal API
    addresses (host:port, where each serves /metrics), behind the same guard as /metrics."""
    from core.nodes import NodeInfo
    from proctor.store.nodes import register

    alone = aioredis.Redis.from_url(settings.redis_url, db=10, decode_responses=True)
    await alone.flushdb()
    token = "metrics-token-0123456789"
    guarded = replace(settings, metrics_token=token)
    runner, base = await _serve(settings, Context(settings, ctx.pool, alone, ctx.storage))
    runner_token, base_token = await _serve(guarded, Context(guarded, ctx.pool, alone, ctx.storage))
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/metrics/targets") as response:  # loopback, no token set: allowed
                assert response.status == 200 and await response.json() == []
            await register(alone, NodeInfo("n-b", "http://10.0.0.6:41234", 0, 4))
            await register(alone, NodeInfo("n-a", "http://10.0.0.5:8090", 1, 4))
            async with http.get(f"{base}/metrics/targets") as response:
                assert await response.json() == [{"targets": ["10.0.0.5:8090", "10.0.0.6:41234"],
                                                  "labels": {"role": "media"}}]
            async with http.get(f"{base_token}/metrics/targets") as response:
                assert response.status == 401  # METRICS_TOKEN set: loopback is no longer enough
            async with http.get(f"{base_token}/metrics/targets", headers={"Authorization": "Bearer nope"}) as r:
                assert r.status == 401
            async with http.get(f"{base_token}/metrics/targets",
                                headers={"Authorization": f"Bearer {token}"}) as response:
                assert response.status == 200 and len((await response.json())[0]["targets"]) == 2
    finally:
        await runner.cleanup()
        await runner_token.cleanup()
        await alone.flushdb()
        await alone.aclose()


async def test_identity_model_without_weights_is_reported(settings: Settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from analyzers.models import install_bundled_weights, model_status

    bare = replace(settings, deepface_home=str(tmp_path), identity_model="VGG-Face")
    status = model_status(bare)["identity"]
    assert status["status"] == "unavailable" and "vgg_face_weights.onnx" in status["detail"]
    dlib = replace(bare, identity_model="Dlib")
    assert model_status(dlib)["identity"]["status"] == "unavailable"
    install_bundled_weights(dlib)
    assert model_status(dlib)["identity"]["status"] == "ok"
