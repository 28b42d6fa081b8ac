"""Throw-away Redis and PostgreSQL servers on free ports, started from the installed
binaries; tests never touch a server they did not start.

Both listen on 127.0.0.1 unless given ``host`` (and ``port``), and may run inside a network
namespace (``netns``, a name under ``/run/netns``, as ``ip netns`` makes them).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import psutil
import redis

from openplace.distributed.cluster import free_port

__all__ = ["PostgresServer", "RedisServer", "free_port", "in_netns", "netns_prefix"]

T = TypeVar("T")
CLONE_NEWNET = 0x40000000


def netns_prefix(netns: str | None) -> list[str]:
    """The command prefix that runs a program inside network namespace ``netns``."""
    return ["ip", "netns", "exec", netns] if netns else []


def in_netns(netns: str, fn: Callable[[], T]) -> T:
    """``fn()`` called in a new thread that has joined network namespace ``netns`` (the
    sockets it opens live there); its result is returned, its exception raised."""
    out: list[T] = []
    err: list[BaseException] = []

    def run() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    errno = ctypes.get_errno()
                    raise OSError(errno, f"setns({netns}): {os.strerror(errno)}")
            finally:
                os.close(fd)
            out.append(fn())
        except BaseException as exc:  # handed to the caller
            err.append(exc)

    thread = threading.Thread(target=run, name=f"netns-{netns}")
    thread.start()
    thread.join()
    if err:
        raise err[0]
    return out[0]


class RedisServer:
    def __init__(
        self, host: str = "127.0.0.1", port: int | None = None, netns: str | None = None
    ) -> None:
        self.host = host
        self.port = port or free_port()
        self.netns = netns
        self.dir = Path(tempfile.mkdtemp(prefix="op-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self) -> RedisServer:
        # Off loopback, no protected mode: a throw-away server on a test network.
        exposed = ["--protected-mode", "no"] if self.host != "127.0.0.1" else []
        self.proc = subprocess.Popen(
            [*netns_prefix(self.netns), "redis-server", "--port", str(self.port),
             "--bind", self.host, *exposed, "--save", "", "--appendonly", "no",
             "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        if self.netns:
            in_netns(self.netns, self._wait_ready)
        else:
            self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        client = redis.Redis(host=self.host, port=self.port)
        for _ in range(200):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.02)
        client.close()

    def kill(self) -> None:
        """SIGKILL: everything in memory is gone."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def pause(self) -> None:
        """SIGSTOP: the server hangs, holding its connections and data."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def _pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for base in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (base / name).exists():
            return str(base / name)
    raise RuntimeError(f"{name} not found: install PostgreSQL")


class PostgresServer:
    """A PostgreSQL cluster in a temp dir, run as the ``postgres`` user when root.

    Listening on another address than 127.0.0.1, it trusts every client on the networks
    that address is on (``samenet``)."""

    def __init__(
        self, host: str = "127.0.0.1", port: int | None = None, netns: str | None = None
    ) -> None:
        self.host = host
        self.port = port or free_port()
        self.netns = netns
        self.dir = Path(tempfile.mkdtemp(prefix="op-pg-"))
        self._dbs = 0
        self._paused: list[psutil.Process] = []

    def _run(self, *args: str, netns_exec: bool = False) -> None:
        cmd = list(args)
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        if netns_exec:
            cmd = [*netns_prefix(self.netns), *cmd]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def start(self) -> PostgresServer:
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        data = self.dir / "data"
        self._run(_pg_bin("initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
                  "--no-sync", "-E", "UTF8")  # fmt: skip
        if self.host != "127.0.0.1":
            with open(data / "pg_hba.conf", "a") as hba:
                hba.write("host all all samenet trust\n")
        self._pg_ctl_start()
        return self

    def _pg_ctl_start(self) -> None:
        opts = (f"-p {self.port} -k {self.dir} -c listen_addresses={self.host} "
                "-c max_connections=200 -c shared_buffers=64MB")  # fmt: skip
        self._run(_pg_bin("pg_ctl"), "-D", str(self.dir / "data"), "-o", opts, "-l",
                  str(self.dir / "log"), "-w", "start", netns_exec=True)  # fmt: skip

    async def new_database(self) -> str:
        """A fresh, empty database; returns its URL."""
        import asyncpg

        self._dbs += 1
        name = f"openplace_test_{self._dbs}"
        if self.netns:  # not reachable from here by TCP: through the Unix socket
            conn = await asyncpg.connect(host=str(self.dir), port=self.port, user="postgres")
        else:
            conn = await asyncpg.connect(self.url())
        try:
            await conn.execute(f"CREATE DATABASE {name}")
        finally:
            await conn.close()
        return self.url(name)

    def kill(self) -> None:
        """Stop at once (like a crash); :meth:`start_again` brings it back."""
        self._run(_pg_bin("pg_ctl"), "-D", str(self.dir / "data"), "-m", "immediate", "stop")

    def start_again(self) -> None:
        self._pg_ctl_start()

    def pause(self) -> None:
        """SIGSTOP the postmaster, then every backend and helper it runs: the whole
        server hangs, its connections stay open. :meth:`resume` continues it."""
        pid = int((self.dir / "data" / "postmaster.pid").read_text().split()[0])
        main = psutil.Process(pid)
        main.suspend()  # first, so that it forks nothing while its children are stopped
        self._paused = [main]
        for child in main.children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                child.suspend()
                self._paused.append(child)

    def resume(self) -> None:
        for proc in reversed(self._paused):
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.resume()
        self._paused = []

    def stop(self) -> None:
        self.resume()
        try:
            self._run(_pg_bin("pg_ctl"), "-D", str(self.dir / "data"), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{db}"
