"""What the benchmarks measure, started and stopped: an embedded server or a cluster."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import psutil
from harness.servers import PostgresServer, RedisServer, free_port

from openplace.distributed.cluster import wait_http

SECRET = "bench-secret"


def base_env(**extra: object) -> dict[str, str]:
    env = {
        "OPENPLACE_SECRET": SECRET,
        "OPENPLACE_COOLDOWN_SECONDS": "0",
        "OPENPLACE_WS_MAX_CONNECTIONS_PER_IP": "100000",
        "OPENPLACE_LOG_LEVEL": "WARNING",
    }
    env.update({k: str(v) for k, v in extra.items()})
    return env


@dataclass
class Embedded:
    """``openplace serve`` in a subprocess, on a given data dir or a fresh temporary one
    (removed again by :meth:`stop`)."""

    data_dir: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    _own_dir: bool = field(default=False, repr=False)
    _log: BinaryIO | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_urls(self) -> list[str]:
        return [f"ws://127.0.0.1:{self.port}/ws"]

    @property
    def api_urls(self) -> list[str]:
        return [self.url]

    def start(self) -> Embedded:
        if self.data_dir is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix="op-bench-"))
            self._own_dir = True
        self.port = free_port()
        env = {**os.environ, **base_env(), **self.env, "OPENPLACE_DATA_DIR": str(self.data_dir)}
        self._log = open(self.data_dir / "server.log", "ab")  # noqa: SIM115 - closed in stop
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "openplace.cli", "--log-level", "WARNING",
                 "serve", "--port", str(self.port)],
                env=env, stdout=subprocess.DEVNULL, stderr=self._log,
            )  # fmt: skip
            proc = self.proc

            def alive() -> None:
                if proc.poll() is not None:
                    raise RuntimeError(f"it exited with status {proc.returncode}")

            wait_http(self.url + "/healthz", 120, alive)
        except BaseException as exc:
            self._own_dir = False  # keep the server's log: the error names it
            self.stop()
            if isinstance(exc, Exception):
                log = self.data_dir / "server.log"
                raise RuntimeError(f"openplace serve did not start; see {log}") from exc
            raise
        return self

    def pids(self) -> list[int]:
        return [self.proc.pid] if self.proc else []

    def realtime_pids(self) -> list[int]:
        return self.pids()

    def stop(self) -> None:
        """Stop the server; remove the data dir if :meth:`start` made it."""
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._own_dir and self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.data_dir = None
            self._own_dir = False


@dataclass
class Distributed:
    """Throw-away Redis and PostgreSQL, then a cluster (persister, API, realtime, nginx)."""

    api: int = 1
    realtime: int = 1
    env: dict[str, str] = field(default_factory=dict)

    def start(self, postgres: PostgresServer, database_url: str | None = None) -> Distributed:
        import asyncio

        from openplace.config import Settings
        from openplace.distributed.cluster import Cluster

        self.redis = RedisServer().start()
        self.database_url = database_url or asyncio.run(postgres.new_database())
        env = base_env(
            OPENPLACE_REDIS_URL=self.redis.url,
            OPENPLACE_DATABASE_URL=self.database_url,
            **self.env,
        )
        self.cluster = Cluster(
            Settings.from_env(env), api=self.api, realtime=self.realtime, env=env
        )
        try:
            self.cluster.start(timeout=120)
        except BaseException:
            self.redis.stop()
            raise
        return self

    @property
    def url(self) -> str:
        return self.cluster.url

    @property
    def api_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{p}" for p in self.cluster.api_ports]

    @property
    def ws_urls(self) -> list[str]:
        return [f"ws://127.0.0.1:{p}/ws" for p in self.cluster.realtime_ports]

    def pids(self) -> list[int]:
        return [p.pid for p in self.cluster.procs.values()]

    def realtime_pids(self) -> list[int]:
        return [p.pid for n, p in self.cluster.procs.items() if n.startswith("realtime")]

    def stop(self) -> None:
        try:
            self.cluster.stop()
        finally:
            self.redis.stop()


def rss(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += psutil.Process(pid).memory_info().rss
    return total


def cpu_split(pids: list[int]) -> tuple[float, float]:
    """User and system (kernel) CPU seconds of processes (and their children) so far."""
    user = system = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc = psutil.Process(pid)
            for p in [proc, *proc.children(recursive=True)]:
                t = p.cpu_times()
                user += t.user
                system += t.system
    return user, system


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of processes (and their children) so far."""
    return sum(cpu_split(pids))
