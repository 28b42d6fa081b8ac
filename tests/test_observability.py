"""Metrics, dashboards, alerts and health (issue 11, points 1 to 3).

The alert rules (deploy/prometheus/alerts.yml) and the Grafana dashboard
(deploy/grafana/openplace.json) are checked without promtool: every PromQL expression
is tokenized, and every metric it names must be exported by the processes of a running
stack (API, realtime and persister processes of a cluster, and an embedded server).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from harness.servers import PostgresServer, RedisServer, free_port
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from openplace.config import Settings, address_in, networks
from openplace.distributed.cluster import Cluster
from openplace.distributed.websocket_server import serve
from tests.conftest import LiveServer, auth, cluster_env, mint_token
from tests.test_realtime import StreamClient
from tests.test_realtime_server import start_lean

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
SCRAPES = ROOT / "deploy" / "prometheus" / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "openplace.json"

# What Prometheus makes itself, not the processes.
SYNTHETIC = {"up"}

# -- PromQL, tokenized ------------------------------------------------------------------

PROMQL_WORDS = {
    # aggregations and their modifiers, operators, keywords
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk",
    "quantile", "count_values", "group", "by", "without", "on", "ignoring",
    "group_left", "group_right", "and", "or", "unless", "bool", "offset", "atan2",
    # functions
    "rate", "irate", "increase", "delta", "idelta", "deriv", "changes", "resets",
    "histogram_quantile", "abs", "ceil", "floor", "round", "clamp", "clamp_min",
    "clamp_max", "vector", "scalar", "time", "timestamp", "absent", "absent_over_time",
    "avg_over_time", "min_over_time", "max_over_time", "sum_over_time",
    "count_over_time", "last_over_time", "quantile_over_time", "label_replace",
    "label_join", "sort", "sort_desc", "predict_linear", "exp", "ln", "log2", "log10",
    "sqrt", "inf", "nan",
}  # fmt: skip
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_RANGE = re.compile(r"\[[^\]]*\]")
_GRAFANA_VAR = re.compile(r"\$\{?\w+\}?")
_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*\{([^}]*)\}")
_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers that are not functions,
    keywords, label names (in braces or after by/without/on/ignoring), or numbers."""
    text = _GRAFANA_VAR.sub("1m", expr)
    text = _RANGE.sub("", text)
    text = re.sub(r"\{[^}]*\}", " ", _STRING.sub('""', text))
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in _IDENT.finditer(text):
        word = match.group()
        start = match.start()
        if word in PROMQL_WORDS or (start > 0 and text[start - 1].isdigit()):
            continue
        names.add(word)
    return names


def selectors(expr: str) -> Iterator[tuple[str, dict[str, str]]]:
    """``(metric, {label: value})`` of each selector with equality matchers."""
    text = _GRAFANA_VAR.sub("1m", expr)
    for match in _SELECTOR.finditer(text):
        name = match.group(1)
        if not name or name in PROMQL_WORDS:
            continue
        labels = {k: v for k, op, v in _MATCHER.findall(match.group(2)) if op == "="}
        yield name, labels


def test_metric_names_of_promql() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, job) (rate(a_bucket{x="y", z=~"u|v"}[5m]))) '
        '/ on (instance) group_left max(b{c!="d"}) or vector(0) > 1e-3 and time() - c < 600'
    )
    assert metric_names(expr) == {"a_bucket", "b", "c"}
    assert list(selectors(expr)) == [("a_bucket", {"x": "y"}), ("b", {})]


def rule_expressions() -> list[tuple[str, str]]:
    rules = yaml.safe_load(ALERTS.read_text())
    out = []
    for group in rules["groups"]:
        assert group["name"] and group["rules"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
            assert rule["alert"].startswith("Openplace"), rule
            assert rule["labels"]["severity"] in ("critical", "warning"), rule
            assert rule["annotations"]["summary"], rule
            assert re.fullmatch(r"\d+[smh]", rule.get("for", "1m")), rule
            out.append((rule["alert"], rule["expr"]))
    return out


def dashboard_expressions() -> list[tuple[str, str]]:
    board = json.loads(DASHBOARD.read_text())
    out = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            out.append((panel["title"], target["expr"]))
    for annotation in board["annotations"]["list"]:
        out.append((annotation["name"], annotation["expr"]))
    return out


def test_alert_rules_and_dashboard_are_well_formed() -> None:
    alerts = {name for name, _ in rule_expressions()}
    wanted = {"OpenplacePlacementsFailing", "OpenplaceAckLatencyHigh", "OpenplaceFanoutLag",
              "OpenplaceNoActivePersister", "OpenplaceRestoreHappened",
              "OpenplaceRedisUnreachable", "OpenplacePostgresUnreachable"}  # fmt: skip
    assert wanted <= alerts
    for name, expr in rule_expressions() + dashboard_expressions():
        assert expr.count("(") == expr.count(")"), name
        assert expr.count("{") == expr.count("}"), name
        assert metric_names(expr), f"{name}: no metric in {expr!r}"
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] and board["title"] and board["schemaVersion"] >= 36
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"], panel["title"]
    scrapes = yaml.safe_load(SCRAPES.read_text())
    jobs = {job["job_name"] for job in scrapes["scrape_configs"]}
    assert jobs == {"api", "realtime", "persister"}
    assert scrapes["rule_files"] == ["/etc/prometheus/alerts.yml"]


# -- what the processes export ----------------------------------------------------------


def exported(text: str) -> dict[str, list[dict[str, str]]]:
    """Sample name → the label sets it is exported with (parsed as Prometheus would)."""
    out: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(dict(sample.labels))
    return out


def check_expressions(exports: dict[str, list[dict[str, str]]]) -> None:
    """Every metric a rule or panel names is exported, with the label values it asks."""
    missing = []
    for where, expr in rule_expressions() + dashboard_expressions():
        for name in metric_names(expr) - SYNTHETIC:
            if name not in exports:
                missing.append(f"{where}: {name}")
        for name, labels in selectors(expr):
            if name in SYNTHETIC or name not in exports:
                continue
            for key, value in labels.items():
                seen = {s.get(key) for s in exports[name]}
                if value not in seen:
                    missing.append(f"{where}: {name}{{{key}={value!r}}} (seen {seen})")
    assert not missing, "\n".join(missing)


async def scrape(client: httpx.AsyncClient, url: str) -> str:
    r = await client.get(url)
    assert r.status_code == 200, (url, r.status_code, r.text)
    assert r.headers["content-type"].startswith("text/plain; version=")
    return r.text


Values = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def values(*texts: str) -> Values:
    """(sample name, sorted labels) → value, summed over the processes scraped."""
    out: Values = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                key = (s.name, tuple(sorted(s.labels.items())))
                out[key] = out.get(key, 0.0) + s.value
    return out


async def status(client: httpx.AsyncClient, url: str, want: int, timeout: float = 15.0) -> Any:
    """The JSON body of ``url`` once it answers ``want`` (within ``timeout``)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        r = await client.get(url)
        if r.status_code == want or asyncio.get_running_loop().time() > deadline:
            assert r.status_code == want, (url, r.text)
            assert r.headers["content-type"] == "application/json"
            assert r.headers["cache-control"] == "no-store"
            return r.json()
        await asyncio.sleep(0.1)


async def test_the_stack_exports_what_the_rules_and_the_dashboard_read(
    cluster: Cluster, redis_server: RedisServer, server: LiveServer
) -> None:
    """A cluster (persister, 2 API, 2 realtime, nginx) and an embedded server: every
    process is live and ready, exports its role's metrics, and together they export
    every metric the alert rules and the dashboard name."""
    (persister_port,) = cluster.persister_ports.values()
    apis = [f"http://127.0.0.1:{p}" for p in cluster.api_ports]
    realtimes = [f"http://127.0.0.1:{p}" for p in cluster.realtime_ports]
    persister = f"http://127.0.0.1:{persister_port}"
    async with httpx.AsyncClient(timeout=10) as client:
        for base in [*apis, *realtimes, persister, server.url]:
            assert (await client.get(base + "/livez")).json() == {"status": "live"}
            assert await status(client, base + "/readyz", 200) == {"status": "ready"}
        # A placement, a refusal and a board through nginx, and one embedded.
        token = mint_token()
        for expected in (200, 429):
            r = await client.post(cluster.url + "/api/pixel", headers=auth(token),
                                  json={"x": 1, "y": 2, "color": 3})  # fmt: skip
            assert r.status_code == expected, r.text
        assert (await client.get(cluster.url + "/api/board")).status_code == 200
        r = await client.post(server.url + "/api/pixel", headers=auth(mint_token()),
                              json={"x": 0, "y": 0, "color": 5})  # fmt: skip
        assert r.status_code == 200, r.text
        # Metrics are not public: nginx denies them.
        assert (await client.get(cluster.url + "/metrics")).status_code == 403

        text = {base: await scrape(client, base + "/metrics")
                for base in [*apis, *realtimes, persister, server.url]}  # fmt: skip
        exports: dict[str, list[dict[str, str]]] = {}
        for one in text.values():
            for name, labels in exported(one).items():
                exports.setdefault(name, []).extend(labels)
        check_expressions(exports)

        # Each process exports its own role's metrics, not the others'.
        api, rt = exported(text[apis[0]]), exported(text[realtimes[0]])
        pers, embedded = exported(text[persister]), exported(text[server.url])
        assert "openplace_acks_waiting" in api and "openplace_websocket_clients" not in api
        assert "openplace_fanout_lag" in rt and "openplace_placements_total" not in rt
        assert "openplace_placements_total" not in pers
        assert "openplace_websocket_clients" in embedded  # serve is the realtime role too
        assert "openplace_sqlite_commit_seconds_count" in embedded
        assert "openplace_dependency_up" not in embedded  # no Redis, no PostgreSQL
        got = values(*(text[base] for base in apis))
        assert got[("openplace_placements_total", (("outcome", "accepted"),))] == 1
        assert got[("openplace_placements_total", (("outcome", "cooldown"),))] == 1
        assert got[("openplace_placement_seconds_count", ())] == 1
        assert got[("openplace_dependency_up", (("dependency", "redis"),))] == 2
        assert got[("openplace_ready", ())] == 2
        got = values(text[persister])
        assert got[("openplace_persister_role", (("role", "active"),))] == 1
        assert got[("openplace_persister_role", (("role", "standby"),))] == 0
        assert got[("openplace_persister_committed_seq", ())] == 1
        assert got[("openplace_pg_commit_batch_size_count", ())] >= 1
        assert got[("openplace_redis_seq", ())] == 1
        got = values(*(text[base] for base in realtimes))
        assert got[("openplace_broadcast_seq", ())] == 2  # seq 1 on each
        assert got[("openplace_fanout_lag", ())] == 0

        # Readiness follows the dependencies: with Redis gone every process says so.
        redis_server.kill()
        for base in [apis[0], realtimes[0], persister]:
            body = await status(client, base + "/readyz", 503)
            assert body["status"] == "not ready" and "redis" in body["not_ready"], body
        got = values(await scrape(client, apis[0] + "/metrics"))
        assert got[("openplace_dependency_up", (("dependency", "redis"),))] == 0
        assert got[("openplace_ready", ())] == 0
        assert (await client.get(apis[0] + "/livez")).status_code == 200


async def test_a_standby_persister_is_ready_and_takes_over(
    postgres: PostgresServer, redis_server: RedisServer
) -> None:
    """The standby reports its role, is ready (it waits for the lock), and is active once
    the active one is gone; a restore shows in the metrics."""
    db = await postgres.new_database()
    env = cluster_env(redis_server.url, db)
    c = Cluster(Settings.from_env(env), api=1, realtime=1, standby=1, env=env)
    await asyncio.to_thread(c.start)
    try:
        urls = {name: f"http://127.0.0.1:{port}" for name, port in c.persister_ports.items()}
        async with httpx.AsyncClient(timeout=10) as client:

            async def role(name: str) -> str:
                got = values(await scrape(client, urls[name] + "/metrics"))
                (held,) = [k[1][0][1] for k, v in got.items()
                           if k[0] == "openplace_persister_role" and v == 1]  # fmt: skip
                return held

            # Both started together: either may have taken the lock.
            roles = {name: await role(name) for name in urls}
            assert sorted(roles.values()) == ["active", "standby"], roles
            (active,) = [name for name, r in roles.items() if r == "active"]
            (standby,) = [name for name, r in roles.items() if r == "standby"]
            assert await status(client, urls[standby] + "/readyz", 200) == {"status": "ready"}
            c.kill(active)
            deadline = asyncio.get_running_loop().time() + 15
            while await role(standby) != "active":
                assert asyncio.get_running_loop().time() < deadline, "no takeover"
                await asyncio.sleep(0.2)
            # Redis restarted empty: the persister restores it, and says so.
            redis_server.kill()
            redis_server.start()
            deadline = asyncio.get_running_loop().time() + 15
            while True:
                got = values(await scrape(client, urls[standby] + "/metrics"))
                if got.get(("openplace_restores_total", ()), 0) >= 1:
                    break
                assert asyncio.get_running_loop().time() < deadline, "no restore"
                await asyncio.sleep(0.2)
            assert got[("openplace_last_restore_timestamp_seconds", ())] > 0
    finally:
        await asyncio.to_thread(c.stop)


async def test_the_lean_realtime_server_serves_metrics_and_probes(tmp_path: Path) -> None:
    """The lean server (on an embedded store as its feed): probes, /metrics with the
    fan-out's counters, only to OPENPLACE_METRICS_FROM, and HTTP methods checked."""
    lean, server = await start_lean(tmp_path)
    private = await serve(lean.hub, "127.0.0.1", free_port(), max_message=1024,
                          metrics_from="10.0.0.0/8")  # fmt: skip
    base = f"http://127.0.0.1:{lean.port}"
    other = f"http://127.0.0.1:{private.sockets[0].getsockname()[1]}"
    try:
        async with httpx.AsyncClient(timeout=10) as client, connect(lean.ws_url + "?since=0") as ws:
            stream = StreamClient(ws)
            await lean.place(10)
            await stream.until(10)
            assert (await client.get(base + "/livez")).json() == {"status": "live"}
            assert await status(client, base + "/readyz", 200) == {"status": "ready"}
            got = values(await scrape(client, base + "/metrics"))
            assert got[("openplace_websocket_clients", ())] == 1
            assert got[("openplace_broadcast_seq", ())] == 10
            assert got[("openplace_fanout_lag", ())] == 0
            assert got[("openplace_websocket_frames_sent_total", ())] >= 1
            assert got[("openplace_websocket_bytes_sent_total", ())] >= 10 * 5
            assert got[("openplace_ready", ())] == 1
            head = await client.head(base + "/metrics")
            assert head.status_code == 200 and head.content == b""
            assert (await client.post(base + "/readyz")).status_code == 405
            r = await client.get(other + "/metrics")
            assert r.status_code == 404 and r.json()["error"] == "not_found"
            assert (await client.get(other + "/readyz")).status_code == 200
            lean.hub.stop()  # no longer following its feed
            body = await status(client, base + "/readyz", 503)
            assert body["not_ready"] == {"feed": "not following the committed placements"}
    finally:
        server.close()
        private.close()
        lean.hub.stop()
        await lean.store.close()


async def test_metrics_only_to_the_configured_networks(
    server_factory: Any, settings: Settings
) -> None:
    live = await server_factory(settings.with_(metrics_from="10.0.0.0/8"))
    async with httpx.AsyncClient(base_url=live.url) as client:
        r = await client.get("/metrics")
        assert r.status_code == 404
        assert r.json()["error"] == "not_found"
        assert (await client.get("/readyz")).status_code == 200  # probes are not secret


def test_metrics_from_setting() -> None:
    s = Settings.from_env({"OPENPLACE_METRICS_FROM": "10.1.0.0/16, fd00::/8,192.0.2.7"})
    allowed = networks(s.metrics_from)
    assert address_in("10.1.2.3", allowed) and address_in("192.0.2.7", allowed)
    assert address_in("fd12::1", allowed) and address_in("::ffff:10.1.0.9", allowed)
    assert not address_in("10.2.0.1", allowed) and not address_in("testclient", allowed)
    default = networks(Settings().metrics_from)
    assert address_in("127.0.0.1", default) and address_in("::1", default)
    assert address_in("172.30.80.5", default) and not address_in("8.8.8.8", default)
    with pytest.raises(ValueError, match="OPENPLACE_METRICS_FROM: 'nope'"):
        Settings.from_env({"OPENPLACE_METRICS_FROM": "10.0.0.0/8,nope"})
    with pytest.raises(ValueError, match="OPENPLACE_PERSISTER_METRICS_PORT"):
        Settings.from_env({"OPENPLACE_PERSISTER_METRICS_PORT": "70000"})
    assert Settings.from_env({"OPENPLACE_PERSISTER_METRICS_PORT": "0"}).persister_metrics_port == 0
