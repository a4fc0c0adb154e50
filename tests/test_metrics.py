"""/metrics (proctor/metrics.py) on a real media node carrying synthetic candidates, the web process and a real
`proctor worker`: the figures move as the system works, scrapes are refused with a reason when they should be, and
every metric the Grafana dashboard (deploy/grafana/proctor.json) queries is in a real scrape."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.synthetic import connect_sender, encode_clip
from media_server.node import MediaNode
from proctor.context import Context
from proctor.redis import FINALIZE_STREAM
from proctor.settings import Settings, SettingsError
from tests.support.accounts import make_user, post_login
from tests.support.media import empty_room, face_canvas
from tests.support.net import free_port
from tests.support.servers import RunningApp, own_web_app
from tests.support.sessions import create_session
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "proctor.json"
STREAMS = 3


@dataclass
class Scrape:
    text: str
    families: dict[str, Any]
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float]

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples called `name` whose labels include `labels` (0 when there are none)."""
        wanted = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and wanted <= ls)

    def names(self) -> set[str]:
        return set(self.families) | {n for n, _ in self.samples}


def parse(text: str) -> Scrape:
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {(s.name, frozenset(s.labels.items())): s.value for f in families.values() for s in f.samples}
    return Scrape(text, families, samples)


async def scrape(url: str, role: str, headers: dict[str, str] | None = None) -> Scrape:
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers or {}) as response:
        text = await response.text()
        assert response.status == 200, (role, text)
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4"), role
    return parse(text)


async def _connect(clip: Any, offer_url: str, token: str, http: aiohttp.ClientSession, nth: int) -> Any:
    """A synthetic candidate, retrying a 503 as the candidate page does: on a loaded 2-core machine the node's
    answer can miss signaling's relay timeout ("no media node has room; retry shortly")."""
    for attempt in range(5):
        try:
            return await connect_sender(clip, offer_url, token, http, start_keyframe=nth)
        except RuntimeError as exc:
            if "503" not in str(exc) or attempt == 4:
                raise
            await asyncio.sleep(2.0)


# --- a media node under load ------------------------------------------------------------------------------------

@pytest.mark.slow
async def test_node_metrics_move_under_load(web_server: RunningApp, media_node: MediaNode, admin_token: str,
                                           ctx: Context) -> None:
    from media_server.ice import install_host_addresses

    install_host_addresses(("127.0.0.1",))
    url = f"{media_node.url}/metrics"
    face = await asyncio.to_thread(encode_clip, [face_canvas()] * 60, 30, 400_000, 30)
    empty = await asyncio.to_thread(encode_clip, [empty_room()] * 60, 30, 400_000, 30)
    before = await scrape(url, "node")
    assert before.value("proctor_node_info", node_id=media_node.node_id) == 1

    pcs = []
    async with aiohttp.ClientSession() as http:
        try:
            for i in range(STREAMS):
                session = await create_session(web_server.url, admin_token, candidate=f"Metrics {i}")
                token = session["join_url"].rsplit("/", 1)[1]
                # The last candidate shows an empty room: a no_face flag is raised and published.
                clip = empty if i == STREAMS - 1 else face
                pcs.append(await _connect(clip, f"{web_server.url}/api/sessions/{session['id']}/offer", token, http, i))

            async def all_flowing() -> Scrape | None:
                now = await scrape(url, "node")
                connected = now.value("proctor_peer_connections", state="connected")
                analysed = now.value("proctor_frames_analysed_total", detector="faces")
                return now if now.value("proctor_streams") >= STREAMS and connected >= STREAMS and \
                    analysed > before.value("proctor_frames_analysed_total", detector="faces") else None

            first = await wait_for(all_flowing, within=30, interval=0.5)
            await asyncio.sleep(3.0)
            second = await scrape(url, "node")
            if os.environ.get("METRICS_SAMPLE"):  # the report's excerpt of a node carrying several streams
                await asyncio.to_thread(Path(os.environ["METRICS_SAMPLE"]).write_text, second.text)

            # Counters move while candidates stream.
            for name, labels in (("proctor_frames_received_total", {"kind": "video"}),
                                 ("proctor_frames_received_total", {"kind": "audio"}),
                                 ("proctor_received_bytes_total", {"kind": "video"}),
                                 ("proctor_frames_decoded_total", {}),
                                 ("proctor_frames_sampled_total", {}),
                                 ("proctor_frames_analysed_total", {"detector": "faces"})):
                assert second.value(name, **labels) > first.value(name, **labels), (name, labels)
            assert second.value("proctor_streams") == STREAMS + before.value("proctor_streams")
            assert second.value("proctor_stream_capacity") == ctx.settings.media_node_capacity
            assert second.value("proctor_analysis_lag_seconds_count", detector="faces") > \
                first.value("proctor_analysis_lag_seconds_count", detector="faces")
            assert second.value("proctor_event_loop_lag_seconds", quantile="0.99") >= 0

            async def rtp_and_archive() -> Scrape | None:
                now = await scrape(url, "node")
                return now if now.value("proctor_rtp_packets_received_total") > 0 and \
                    now.value("proctor_segments_written_total") > before.value("proctor_segments_written_total") and \
                    now.value("proctor_segments_uploaded_total") > before.value("proctor_segments_uploaded_total") \
                    else None

            archived = await wait_for(rtp_and_archive, within=30, interval=0.5)  # SEGMENT_SECONDS=2 in the tests
            assert archived.value("proctor_rtp_packets_lost_total") >= 0
            assert 0 <= archived.value("proctor_rtp_jitter_mean_seconds") <= \
                archived.value("proctor_rtp_jitter_max_seconds") < 5
            assert archived.value("proctor_segments_spooled") >= 0

            async def flagged() -> Scrape | None:
                now = await scrape(url, "node")
                return now if now.value("proctor_alerts_total", kind="no_face") > \
                    before.value("proctor_alerts_total", kind="no_face") else None

            raised = await wait_for(flagged, within=30, interval=0.5)
            assert raised.value("proctor_alert_publish_latency_seconds_count") > \
                before.value("proctor_alert_publish_latency_seconds_count")
        finally:
            await asyncio.gather(*(pc.close() for pc in pcs), return_exceptions=True)

    # The streams end: the node's gauges come down, its counters never do (ended streams are kept in the totals).
    async def drained() -> Scrape | None:
        now = await scrape(url, "node")
        return now if now.value("proctor_streams") == before.value("proctor_streams") else None

    after = await wait_for(drained, within=30, interval=0.5)
    for name, labels in (("proctor_frames_received_total", {"kind": "video"}), ("proctor_frames_decoded_total", {}),
                         ("proctor_rtp_packets_received_total", {}), ("proctor_received_bytes_total", {})):
        assert after.value(name, **labels) >= raised.value(name, **labels), name


async def test_node_metrics_need_no_signature_but_the_rest_of_its_api_does(media_node: MediaNode) -> None:
    await scrape(f"{media_node.url}/metrics", "node")
    async with aiohttp.ClientSession() as http:
        for path in ("/stats", "/metrics/", "/Metrics"):
            async with http.get(f"{media_node.url}{path}") as response:
                assert response.status == 401, path
        async with http.post(f"{media_node.url}/metrics", data=b"{}") as response:
            assert response.status == 401  # only GET skips the signature


# --- access --------------------------------------------------------------------------------------------------

TOKEN = "metrics-" + "k" * 24


async def test_token_is_required_when_set(settings: Settings, ctx: Context) -> None:
    async with own_web_app(settings, ctx, metrics_token=TOKEN) as base, aiohttp.ClientSession() as http:
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": TOKEN},
                        {"Authorization": f"Basic {TOKEN}"}, {"Authorization": "Bearer " + "é" * 40}):
            async with http.get(f"{base}/metrics", headers=headers) as response:
                assert response.status == 401, headers
                assert "METRICS_TOKEN" in (await response.json())["error"]
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
        scraped = await scrape(f"{base}/metrics", "web", {"Authorization": f"Bearer {TOKEN}"})
        assert "proctor_login_failures" in scraped.families


async def test_without_token_only_loopback_and_allowed_networks(settings: Settings, ctx: Context) -> None:
    # Behind a trusted reverse proxy on loopback, a public client must not pass as loopback (web/proxy.py).
    outside = {"X-Forwarded-For": "203.0.113.9"}
    async with own_web_app(settings, ctx, trusted_proxies=("127.0.0.1",)) as base, aiohttp.ClientSession() as http:
        async with http.get(f"{base}/metrics", headers=outside) as response:
            assert response.status == 403
            assert "METRICS_ALLOW" in (await response.json())["error"]
        await scrape(f"{base}/metrics", "web")  # the proxy host itself (loopback)
    async with own_web_app(settings, ctx, trusted_proxies=("127.0.0.1",), metrics_allow=("203.0.113.0/24",)) as base:
        await scrape(f"{base}/metrics", "web", outside)
        async with aiohttp.ClientSession() as http, http.get(
                f"{base}/metrics", headers={"X-Forwarded-For": "198.51.100.1"}) as response:
            assert response.status == 403


def test_metrics_settings_are_checked() -> None:
    for bad in ("short", "pt_" + "x" * 30):
        with pytest.raises(SettingsError, match="METRICS_TOKEN"):
            Settings.from_env({"METRICS_TOKEN": bad}, env_file=None)
    with pytest.raises(SettingsError, match="METRICS_ALLOW"):
        Settings.from_env({"METRICS_ALLOW": "10.0.0.0/8,<script>"}, env_file=None)
    with pytest.raises(SettingsError, match="WORKER_METRICS_PORT"):
        Settings.from_env({"WORKER_METRICS_PORT": "99999999999999999999"}, env_file=None)


async def test_failed_logins_are_counted(web_server: RunningApp, ctx: Context) -> None:
    name = await make_user(ctx)
    url = f"{web_server.url}/metrics"
    before = await scrape(url, "web")
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        response = await post_login(http, web_server.url, name, "not the password")
        assert response.status == 401
    after = await scrape(url, "web")
    assert after.value("proctor_login_failures_total", reason="wrong_password") == \
        before.value("proctor_login_failures_total", reason="wrong_password") + 1


# --- a worker -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def worker_metrics(settings: Settings) -> Iterator[str]:
    """A real `proctor worker` with its metrics server on a free port. Only the webhooks role: nothing takes the
    archive jobs this module queues, so their depth stays put."""
    port = free_port()
    env = dict(os.environ, DATABASE_URL=settings.database_url, REDIS_URL=settings.redis_url,
               PROCTOR_DATA_DIR=str(settings.data_dir), SECRET_KEY=settings.secret_key,
               WORKER_METRICS_PORT=str(port))
    proc = subprocess.Popen([sys.executable, "-m", "proctor", "worker", "--roles", "webhooks"], cwd=ROOT, env=env)
    try:
        yield f"http://127.0.0.1:{port}/metrics"
    finally:
        proc.terminate()
        proc.wait(30)


async def _worker_up(url: str) -> Scrape:
    async def answering() -> Scrape | None:
        try:
            return await scrape(url, "worker")
        except aiohttp.ClientError:
            return None

    return await wait_for(answering, within=60, interval=0.5)


@pytest.mark.slow
async def test_worker_scrape_shows_queue_depth_age_and_dead_letters(worker_metrics: str, ctx: Context) -> None:
    before = await _worker_up(worker_metrics)
    assert before.value("proctor_job_queue_up") == 1
    assert {"merge", "finalize", "webhooks"} <= {dict(ls).get("queue") for n, ls in before.samples
                                                  if n == "proctor_job_queue_depth"}
    marker = uuid.uuid4().hex
    ids = [await ctx.redis.xadd(FINALIZE_STREAM, {"session_id": f"metrics-test-{marker}"}) for _ in range(3)]
    dead = await ctx.redis.xadd(f"{FINALIZE_STREAM}:dead", {"session_id": marker, "_error": "test"})
    try:
        await asyncio.sleep(1.1)
        after = await scrape(worker_metrics, "worker")
        assert after.value("proctor_job_queue_depth", queue="finalize") >= \
            before.value("proctor_job_queue_depth", queue="finalize") + 3
        assert after.value("proctor_job_queue_oldest_age_seconds", queue="finalize") >= 1.0
        assert after.value("proctor_job_dead_letters", queue="finalize") == \
            before.value("proctor_job_dead_letters", queue="finalize") + 1
        assert "proctor_finalize_duration_seconds" in after.families
    finally:
        await ctx.redis.xdel(FINALIZE_STREAM, *ids)
        await ctx.redis.xdel(f"{FINALIZE_STREAM}:dead", dead)


@pytest.mark.slow
async def test_finalize_duration_is_observed(ctx: Context, tmp_path: Path) -> None:
    """The finalize job handler (archiver/assemble.py) times each build it makes, and only those."""
    from prometheus_client.exposition import generate_latest

    from archiver.assemble import handler
    from archiver.jobs import Job, JobQueue, consumer_name
    from proctor import metrics
    from tests.support.archive import recorded_session

    def finalized_count() -> float:
        return parse(generate_latest(metrics.registry_for(*metrics.WORKER_METRICS)).decode()).value(
            "proctor_finalize_duration_seconds_count", outcome="finalized")

    queue = JobQueue(ctx.redis, FINALIZE_STREAM, consumer=consumer_name())
    await queue.ensure_group()
    run = handler("finalize", ctx, queue)
    sid, _ = await recorded_session(ctx, tmp_path, 3, "ended")
    before = finalized_count()
    await run(Job("0-1", FINALIZE_STREAM, {"session_id": sid}, 1))
    assert finalized_count() == before + 1
    await run(Job("0-2", FINALIZE_STREAM, {"session_id": sid}, 1))  # finalized already: nothing built, not timed
    assert finalized_count() == before + 1


# --- the dashboard -----------------------------------------------------------------------------------------------

def _queried_metrics(dashboard: dict[str, Any]) -> set[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert exprs
    return {name for expr in exprs for name in re.findall(r"\bproctor_[a-z0-9_]+", expr)}


@pytest.fixture
async def every_role_scraped(web_server: RunningApp, media_node: MediaNode, worker_metrics: str) -> AsyncIterator[
        set[str]]:
    names: set[str] = set()
    for role, url in (("web", f"{web_server.url}/metrics"), ("node", f"{media_node.url}/metrics")):
        names |= (await scrape(url, role)).names()
    names |= (await _worker_up(worker_metrics)).names()
    yield names


async def test_dashboard_queries_only_metrics_that_exist(every_role_scraped: set[str]) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    queried = _queried_metrics(dashboard)
    suffixes = ("_bucket", "_count", "_sum", "_total")
    missing = sorted(q for q in queried if q not in every_role_scraped and not any(
        q.endswith(s) and q[:-len(s)] in every_role_scraped for s in suffixes))
    assert not missing, f"the dashboard queries metrics no process exports: {missing}"
    # It covers what operators look at first.
    for needed in ("proctor_streams", "proctor_alert_publish_latency_seconds_bucket",
                   "proctor_analysis_lag_seconds_bucket", "proctor_rtp_packets_lost_total", "proctor_job_queue_depth",
                   "proctor_job_queue_oldest_age_seconds",
                   "proctor_job_dead_letters", "proctor_segments_spooled", "proctor_login_failures_total"):
        assert needed in queried, needed
    # Every panel reads from the dashboard's Prometheus data source variable, so it imports into any Grafana.
    assert all(p["datasource"]["uid"] == "${datasource}" for p in dashboard["panels"])
