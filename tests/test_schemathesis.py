"""Schemathesis from the served OpenAPI description, in both modes: no 5xx, and every
answer conforms to the description (status, content type, headers, body schema).

- embedded: ``openplace serve``'s app on uvicorn, in a thread of this process;
- distributed: an ``openplace api`` process on real Redis and PostgreSQL (with a
  persister and nginx, as ``openplace cluster`` starts them), called directly.

Each mode is one ``schemathesis run`` (the command line, as an attacker would run it)
with every check, positive and negative data, and every phase: examples, coverage,
fuzzing, and stateful scenarios along the description's links (a session's token to
``GET /api/me`` and ``POST /api/pixel``, a placement to its pixel and to ``/api/me``).
``OPENPLACE_TEST_FUZZ_EXAMPLES`` (default 150) is the number of examples per operation; the
case counts are printed at the end, e.g. ``OPENPLACE_TEST_FUZZ_EXAMPLES=2000 .venv/bin/pytest
tests/test_schemathesis.py`` for a long run. ``OPENPLACE_TEST_FUZZ_SEED`` replays a run.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from harness.servers import PostgresServer, RedisServer

from openplace.api.server import uvicorn_config
from openplace.app import create_app
from openplace.config import Settings
from openplace.distributed.cluster import Cluster, free_port
from tests.conftest import cluster_env, mint_token

EXAMPLES = int(os.environ.get("OPENPLACE_TEST_FUZZ_EXAMPLES", "150"))
SEED = os.environ.get("OPENPLACE_TEST_FUZZ_SEED")
COOLDOWN = 0.2  # short: POST /api/pixel answers both 200 and 429 (cooldown)
COUNTS: dict[str, int] = {}
# Schemathesis's defaults, plus 413 (body too large) and 431 (headers too large): a
# negative case refused with either is refused.
CONFIG = f"""
generation.max-examples = {EXAMPLES}

[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422",
                     "428", "429", "431", "5xx"]
"""
# Read-only operations whose parameters are a few bounded numbers (the history's and the
# admin reads), and the admin actions (with the user's token the run sends, each is
# refused 403 before its body is read): a quarter (a tenth) of the examples finds what
# there is to find in them, and keeps the suite's time in bounds.
READ_ONLY = ["/api/board.png", "/api/heatmap.png", "/api/history", "/api/pixel/history",
             "/api/admin/me", "/api/admin/audit", "/api/admin/bans"]  # fmt: skip
ADMIN_ACTIONS = [f"/api/admin/{verb}" for verb in ("ban", "unban", "rollback", "fill",
                 "protect", "unprotect", "freeze", "unfreeze")]  # fmt: skip
CONFIG += "".join(
    f'\n[[operations]]\ninclude-path = "{path}"\ngeneration.max-examples = '
    f"{max(25, EXAMPLES // (4 if path in READ_ONLY else 10))}\n"
    for path in READ_ONLY + ADMIN_ACTIONS
)


@pytest.fixture(scope="module", autouse=True)
def report(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if reporter is not None and capture is not None and COUNTS:
        shown = ", ".join(f"{mode} {n}" for mode, n in COUNTS.items())
        with capture.global_and_fixture_disabled():
            reporter.write_line(
                f"\nschemathesis: {sum(COUNTS.values())} cases ({shown}; "
                f"OPENPLACE_TEST_FUZZ_EXAMPLES={EXAMPLES})"
            )


def schemathesis_run(url: str, mode: str) -> None:
    """Run schemathesis against ``url``; fail with its report unless it found nothing."""
    cmd = [
        str(Path(sys.executable).with_name("schemathesis")), "run",
        url + "/api/openapi.json",
        "--checks", "all",
        "--mode", "all",
        "--header", f"Authorization: Bearer {mint_token()}",
        "--request-timeout", "30",
        "--workers", "1",  # threads: Python 3.11's ast.parse is not thread-safe
        "--no-color",
    ]  # fmt: skip
    if SEED:
        cmd += ["--seed", SEED]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": ""}
    with tempfile.TemporaryDirectory(prefix="op-fuzz-") as tmp:
        config = Path(tmp) / "schemathesis.toml"
        config.write_text(CONFIG)
        cmd[1:1] = ["--config-file", str(config)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, env=env, cwd=tmp)
    found = re.search(r"(\d+) generated", done.stdout)
    COUNTS[mode] = int(found.group(1)) if found else 0
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert COUNTS[mode] > 0, done.stdout[-3000:]


@pytest.fixture(scope="module")
def embedded_url() -> Iterator[str]:
    data = Path(tempfile.mkdtemp(prefix="op-fuzz-"))
    s = Settings(
        data_dir=data, secret="test-secret", width=100, height=80,
        cooldown_seconds=COOLDOWN, sessions_per_ip_per_minute=1_000_000, port=free_port(),
        sessions_per_address_per_day=1_000_000, cooldown_by="user",
    )  # fmt: skip
    server = uvicorn.Server(uvicorn_config(create_app(s), s))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            assert thread.is_alive(), "the embedded server did not start"
            threading.Event().wait(0.02)
        yield f"http://127.0.0.1:{s.port}"
    finally:
        server.should_exit = True
        thread.join(30)
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture(scope="module")
def distributed_url(postgres: PostgresServer) -> Iterator[str]:
    redis = RedisServer().start()
    try:
        db = asyncio.run(postgres.new_database())
        env = cluster_env(
            redis.url, db, OPENPLACE_COOLDOWN_SECONDS=str(COOLDOWN),
            OPENPLACE_SESSIONS_PER_IP_PER_MINUTE="1000000",
            OPENPLACE_SESSIONS_PER_ADDRESS_PER_DAY="1000000",
        )  # fmt: skip
        with Cluster(Settings.from_env(env), api=1, realtime=1, env=env) as cluster:
            yield f"http://127.0.0.1:{cluster.api_ports[0]}"
    finally:
        redis.stop()


def test_embedded_api_conforms_to_its_description(embedded_url: str) -> None:
    schemathesis_run(embedded_url, "embedded")


def test_distributed_api_conforms_to_its_description(distributed_url: str) -> None:
    schemathesis_run(distributed_url, "distributed")
