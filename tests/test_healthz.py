"""/healthz reports database, Redis, storage, models and media nodes (the detail to staff: these calls carry an
API token; tests/test_security_web.py checks what it tells anyone else); a dead dependency gives 503."""

from __future__ import annotations

from dataclasses import replace

import aiohttp
from aiohttp import web
from alembic.script import ScriptDirectory

from proctor import migrate
from proctor.context import Context
from proctor.redis import connect
from proctor.settings import Settings
from tests.support.net import free_port
from tests.support.servers import RunningApp


async def test_healthz_ok(web_server: RunningApp, admin_token: str) -> None:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {admin_token}"}) as http, \
            http.get(f"{web_server.url}/healthz") as response:
        assert response.status == 200
        body = await response.json()
    assert body["status"] == "ok"
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
    assert isinstance(body["media_nodes"], list)


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
        assert body["status"] == "error"
        assert body["redis"]["status"] == "error" and "Connection" in body["redis"]["error"]
        assert body["database"]["status"] == "ok"
    finally:
        await runner.cleanup()
        await dead.aclose()


async def test_identity_model_without_weights_is_reported(settings: Settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from analyzers.models import install_bundled_weights, model_status

    bare = replace(settings, deepface_home=str(tmp_path), identity_model="VGG-Face")
    status = model_status(bare)["identity"]
    assert status["status"] == "unavailable" and "vgg_face_weights.onnx" in status["detail"]
    dlib = replace(bare, identity_model="Dlib")
    assert model_status(dlib)["identity"]["status"] == "unavailable"
    install_bundled_weights(dlib)
    assert model_status(dlib)["identity"]["status"] == "ok"
