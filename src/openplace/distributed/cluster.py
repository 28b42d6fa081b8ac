"""``openplace cluster``: a whole distributed stack on loopback, for trying and testing.

Starts one persister, N API and M realtime processes against the configured Redis and
PostgreSQL, and nginx in front of them, and stops them all together.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from openplace.app import STATIC_DIR
from openplace.config import Settings

TEMPLATE = Path(__file__).with_name("nginx.conf.template")  # package data


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_nginx() -> str:
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError("nginx not found (apt-get install nginx)")


def wait_http(url: str, timeout: float, check: Callable[[], None] | None = None) -> None:
    """Wait until ``url`` answers 200 (``check`` runs between tries, and may raise)."""
    deadline = time.monotonic() + timeout
    while True:
        if check is not None:
            check()
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer 200 within {timeout:.0f} s")
        time.sleep(0.05)


def _upstream(server: int | str) -> str:
    """A port means ``127.0.0.1:port``; a string is an address as is (``"10.0.0.5:8000"``)."""
    return f"127.0.0.1:{server}" if isinstance(server, int) else server


def render_nginx(
    run_dir: Path, listen: str, api: Sequence[int | str], realtime: Sequence[int | str]
) -> str:
    """The nginx config; ``api`` and ``realtime`` are ports on 127.0.0.1, or ``host:port``."""
    template = string.Template(TEMPLATE.read_text())
    return template.safe_substitute(
        USER_DIRECTIVE="user root;" if os.geteuid() == 0 else "",
        RUN_DIR=str(run_dir),
        STATIC_DIR=str(STATIC_DIR),
        LISTEN=listen,
        API_SERVERS=" ".join(f"server {_upstream(s)} max_fails=0;" for s in api),
        REALTIME_SERVERS=" ".join(f"server {_upstream(s)} max_fails=0;" for s in realtime),
    )


@dataclass
class Cluster:
    """A running local stack. Use as a context manager, or :meth:`start`/:meth:`stop`."""

    settings: Settings
    api: int = 2
    realtime: int = 2
    standby: int = 0  # extra persisters (persister2, ...) that stand by for the active one
    port: int = 0
    env: dict[str, str] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    api_ports: list[int] = field(default_factory=list)
    realtime_ports: list[int] = field(default_factory=list)
    # Each persister's port for /metrics, /livez and /readyz, by name (kept on restart).
    persister_ports: dict[str, int] = field(default_factory=dict)
    run_dir: Path | None = None
    failed: bool = False
    commands: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _spawn(self, name: str, *args: str) -> None:
        env = {**os.environ, **self.env}
        if args[:1] == ("persister",):
            port = self.persister_ports.setdefault(name, free_port())
            env["OPENPLACE_PERSISTER_METRICS_PORT"] = str(port)
        assert self.run_dir is not None
        self.commands[name] = args
        with open(self.run_dir / f"{name}.log", "ab") as log:  # the child keeps its own copy
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "openplace.cli", *args], env=env, stdout=log, stderr=log
            )

    def start(self, timeout: float = 30.0) -> Cluster:
        self.run_dir = Path(tempfile.mkdtemp(prefix="openplace-cluster-"))
        self.port = self.port or free_port()
        self._spawn("persister", "persister")
        for i in range(self.standby):
            self._spawn(f"persister{i + 2}", "persister")
        for i in range(self.api):
            port = free_port()
            self.api_ports.append(port)
            self._spawn(f"api{i + 1}", "api", "--port", str(port))
        for i in range(self.realtime):
            port = free_port()
            self.realtime_ports.append(port)
            self._spawn(f"realtime{i + 1}", "realtime", "--port", str(port))
        conf = self.run_dir / "nginx.conf"
        conf.write_text(
            render_nginx(self.run_dir, f"127.0.0.1:{self.port}", self.api_ports,
                         self.realtime_ports)
        )  # fmt: skip
        self.procs["nginx"] = subprocess.Popen(
            [find_nginx(), "-c", str(conf), "-p", str(self.run_dir), "-g", "daemon off;"],
            stderr=open(self.run_dir / "nginx.log", "wb"),  # noqa: SIM115
        )
        deadline = time.monotonic() + timeout
        # Ready: each process's dependencies answer and it holds the current board (the
        # persister: active, or standing by); then nginx in front of them.
        ports = [*self.persister_ports.values(), *self.api_ports, *self.realtime_ports]
        urls = [f"http://127.0.0.1:{p}/readyz" for p in ports]
        urls.append(self.url + "/healthz")
        for url in urls:
            try:
                wait_http(url, deadline - time.monotonic(), check=self._check_alive)
            except TimeoutError:
                self.stop(keep_logs=True)
                raise RuntimeError(
                    f"cluster did not come up: {url}; logs in {self.run_dir}"
                ) from None
        return self

    def _check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                logs = (self.run_dir or Path(".")) / f"{name}.log"
                tail = logs.read_text()[-2000:] if logs.exists() else ""
                self.stop(keep_logs=True)
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail}")

    def stop(self, keep_logs: bool = False) -> None:
        """Stop every process; remove the run directory unless ``keep_logs`` or
        something failed (its logs are what the error message points to)."""
        self.failed = self.failed or keep_logs
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in self.procs.items():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                print(f"openplace cluster: {name} did not stop within 10 s of SIGTERM; "
                      "killed", file=sys.stderr)  # fmt: skip
                proc.kill()
                proc.wait()
        self.procs.clear()
        if self.run_dir is not None and not self.failed:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def kill(self, name: str) -> None:
        """Kill one process at once (fault tests)."""
        self.procs[name].kill()
        self.procs[name].wait()

    def restart(self, name: str) -> None:
        """Start process ``name`` again with its arguments and port (killing it first if it
        still runs); its log continues in the same file. Not for nginx."""
        if self.procs[name].poll() is None:
            self.kill(name)
        self._spawn(name, *self.commands[name])

    def __enter__(self) -> Cluster:
        try:
            return self.start()
        except BaseException:  # e.g. Ctrl-C or SIGTERM while starting: no orphans
            self.stop(keep_logs=True)
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
