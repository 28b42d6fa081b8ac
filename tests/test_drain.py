"""An API process told to stop drains first (issue 11, point 7): for the drain it goes on
answering, each answer closing its connection, so a proxy moves its requests to the
other processes; then it stops."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx

from openplace.api.server import DrainingServer, uvicorn_config
from openplace.app import create_app
from openplace.config import Settings
from openplace.distributed.cluster import free_port
from openplace.state import state_of


def test_a_stopping_server_answers_with_connection_close_then_stops(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, secret="test-secret", width=100, height=80, port=free_port())
    app = create_app(s)
    drain = state_of(app).drain
    server = DrainingServer(uvicorn_config(app, s, drain), drain, drain_seconds=0.6)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive()
        time.sleep(0.02)
    url = f"http://127.0.0.1:{s.port}/api/canvas"
    ready_url = url.replace("/api/canvas", "/readyz")
    # Two kept-alive connections, as a proxy holds them. Once draining, the server stops
    # listening (at its next tick): requests come on the connections it has.
    with httpx.Client(timeout=5) as client, httpx.Client(timeout=5) as probe:
        assert "connection" not in client.get(url).headers  # kept alive
        assert probe.get(ready_url).status_code == 200
        stopped_at = time.monotonic()
        server.handle_exit(signal.SIGTERM, None)
        during = client.get(url)
        assert during.status_code == 200 and during.headers["connection"] == "close"
        ready = probe.get(ready_url)
        assert ready.status_code == 503 and "draining" in ready.json()["not_ready"]
    thread.join(10)
    assert not thread.is_alive()
    assert time.monotonic() - stopped_at >= 0.6  # it drained before it stopped
