"""The nemesis: one fault at a time, at seeded random times, each healed before the next.

Kinds (:data:`KINDS`):

- ``redis-kill``: SIGKILL Redis, restart it empty (no persistence) on the same port.
- ``persister-kill``: SIGKILL the persister that holds the PostgreSQL advisory lock; the
  standby takes over; the killed one is started again as the new standby.
- ``api-kill``, ``realtime-kill``: SIGKILL one of the two processes, start it again on
  the same port.
- ``pg-stop``: ``pg_ctl stop -m immediate`` (a crash), then start it again.
- ``redis-pause``, ``pg-pause``: SIGSTOP the server (for PostgreSQL: the postmaster
  and all its processes) for a second or two (``pause``), then SIGCONT. A hang, not a
  crash.

Not among them, asked for by name: ``rolling``, an upgrade's rolling restart: every API
process, then every realtime process, one after another, stopped as an orchestrator
stops them (SIGTERM, then wait for the exit) and started again, each back before the next.

The order of kinds (shuffled rounds, so every kind comes once per round), the gaps,
the fault lengths and the targets all come from one ``random.Random(seed)``. After a
fault is healed the nemesis waits for the next acknowledged placement (the recovery),
so each recovery is measured on its own.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg
import httpx
import psutil
from harness.servers import PostgresServer, RedisServer

from openplace.distributed.cluster import Cluster
from openplace.distributed.schema import PERSISTER_LOCK
from tests.faults.history import History

KINDS = (
    "redis-kill",
    "persister-kill",
    "api-kill",
    "realtime-kill",
    "pg-stop",
    "redis-pause",
    "pg-pause",
)

# The backend holding the persister's advisory lock (one bigint key: classid is its high
# half, objid its low half, objsubid 1), and the port its client connects from.
_LOCK_HOLDER = """
SELECT a.client_port FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
  AND l.classid::bigint = $1::bigint >> 32 AND l.objid::bigint = $1::bigint & 4294967295
"""


def _frame(line: str) -> str:
    """``File "/x/openplace/cli.py", line 121, in main`` -> ``openplace/cli.py:121 main``"""
    match = re.match(r'File ".*/(openplace/[^"]+)", line (\d+), in (.+)', line)
    return f"{match[1]}:{match[2]} {match[3]}" if match else line


@dataclass
class Fault:
    kind: str
    target: str
    start: float  # monotonic: the fault began
    heal: float | None = None  # ... and was healed (restarted, resumed)
    pg_down: tuple[float, float] | None = None  # PostgreSQL surely unreachable in between
    note: str = ""


@dataclass
class Stack:
    """What the nemesis works on: servers and processes this run started itself."""

    pg: PostgresServer
    redis: RedisServer
    cluster: Cluster
    db_url: str


class Nemesis:
    def __init__(
        self,
        stack: Stack,
        history: History,
        seed: int,
        say: Callable[[str], None],
        pause: tuple[float, float] = (1.0, 2.0),
    ) -> None:
        self.stack = stack
        self.history = history
        self.rng = random.Random(seed)
        self.say = say
        self.pause = pause  # how long a SIGSTOP lasts (uniform, seeded)
        self.faults: list[Fault] = []
        self.problems: list[str] = []  # what the nemesis could not do, or did not see heal
        self._redis_paused = False
        self._pg_paused = False

    async def run(
        self,
        seconds: float,
        gap: tuple[float, float],
        kinds: tuple[str, ...] = KINDS,
        rounds: int = 1,
        recover_timeout: float = 30.0,
    ) -> None:
        """Inject faults for ``seconds``, and at least ``rounds`` full rounds (each kind
        once per round, in a shuffled order)."""
        deadline = time.monotonic() + seconds
        done = 0
        while done < rounds or time.monotonic() < deadline:
            order = list(kinds)
            self.rng.shuffle(order)
            for kind in order:
                if done >= rounds and time.monotonic() >= deadline:
                    break
                await asyncio.sleep(self.rng.uniform(*gap))
                await self.check_processes()
                fault = await self.inject(kind)
                await self._wait_recovered(fault, recover_timeout)
            done += 1
        await self.check_processes()

    async def check_processes(self) -> None:
        """A process of the stack that exited without being killed is a problem; start it
        again, so that the run goes on with a whole stack."""
        cluster = self.stack.cluster
        for name, proc in list(cluster.procs.items()):
            code = proc.poll()
            if code is None:
                continue
            if name not in cluster.commands:  # nginx: nothing to restart it with
                problem = f"{name} exited by itself with code {code}"
                if problem not in self.problems:
                    self.problems.append(problem)
                continue
            self.problems.append(
                f"{name} exited by itself with code {code} (no fault was dealt to it): "
                + self._last_error(name)
            )
            self.say(f"{self.history.rel(time.monotonic()):>9} s  {name} exited by itself "
                     f"({code}); starting it again")  # fmt: skip
            await asyncio.to_thread(cluster.restart, name)

    async def inject(self, kind: str) -> Fault:
        stack, rng = self.stack, self.rng
        cluster = stack.cluster
        if kind == "redis-kill":
            fault = self._begin(kind, "redis")
            await asyncio.to_thread(stack.redis.kill)
            await asyncio.sleep(rng.uniform(0.1, 1.0))
            await asyncio.to_thread(stack.redis.start)
        elif kind == "persister-kill":
            name = await self._active_persister()
            fault = self._begin(kind, name or "?")
            if name is None:
                self.problems.append("persister-kill: no persister held the lock for 10 s")
                fault.note = "no active persister found"
            else:
                await asyncio.to_thread(cluster.kill, name)
                await asyncio.sleep(rng.uniform(0.1, 1.0))
                await asyncio.to_thread(cluster.restart, name)  # the new standby
        elif kind in ("api-kill", "realtime-kill"):
            role = kind.split("-")[0]
            ports = cluster.api_ports if role == "api" else cluster.realtime_ports
            i = rng.randrange(len(ports))
            name = f"{role}{i + 1}"
            fault = self._begin(kind, name)
            await asyncio.to_thread(cluster.kill, name)
            await asyncio.sleep(rng.uniform(0.2, 1.0))
            await asyncio.to_thread(cluster.restart, name)
            fault.heal = time.monotonic()
            await self._wait_healthy(name, ports[i])
        elif kind == "rolling":
            fault = self._begin(kind, "api, realtime")
            for role, ports in (("api", cluster.api_ports), ("realtime", cluster.realtime_ports)):
                for i, port in enumerate(ports):
                    name = f"{role}{i + 1}"
                    took = await asyncio.to_thread(self._stop_gracefully, name)
                    await asyncio.to_thread(cluster.restart, name)
                    await self._wait_healthy(name, port)
                    self.say(f"{self.history.rel(time.monotonic()):>9} s  {name} stopped in "
                             f"{took:.2f} s and back")  # fmt: skip
        elif kind == "pg-stop":
            fault = self._begin(kind, "postgresql")
            await asyncio.to_thread(stack.pg.kill)
            down = time.monotonic()
            await asyncio.sleep(rng.uniform(0.5, 2.0))
            fault.pg_down = (down, time.monotonic())
            await asyncio.to_thread(stack.pg.start_again)
        elif kind == "redis-pause":
            fault = self._begin(kind, "redis")
            stack.redis.pause()
            self._redis_paused = True
            await asyncio.sleep(rng.uniform(*self.pause))
            stack.redis.resume()
            self._redis_paused = False
        elif kind == "pg-pause":
            fault = self._begin(kind, "postgresql")
            self._pg_paused = True
            await asyncio.to_thread(stack.pg.pause)
            down = time.monotonic()
            await asyncio.sleep(rng.uniform(*self.pause))
            fault.pg_down = (down, time.monotonic())
            stack.pg.resume()
            self._pg_paused = False
        else:
            raise ValueError(f"unknown fault kind {kind!r}")
        if fault.heal is None:
            fault.heal = time.monotonic()
        self.say(f"{self.history.rel(fault.start):>9} s  {kind:<15} {fault.target:<11} "
                 f"healed after {fault.heal - fault.start:.2f} s")  # fmt: skip
        return fault

    def _stop_gracefully(self, name: str, timeout: float = 30.0) -> float:
        """SIGTERM and wait for the exit; how long it took (a problem if it had to be
        killed)."""
        proc = self.stack.cluster.procs[name]
        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.problems.append(f"{name} did not stop within {timeout:.0f} s of SIGTERM")
            proc.kill()
            proc.wait()
        return time.monotonic() - began

    def _last_error(self, name: str) -> str:
        """The last error a process logged: its exception's last lines, where it was."""
        run_dir = self.stack.cluster.run_dir
        path = run_dir / f"{name}.log" if run_dir is not None else None
        if path is None or not path.exists():
            return "(no log)"
        for line in reversed(path.read_text(errors="replace").splitlines()):
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("level") not in ("error", "critical"):
                continue
            frames = [t.strip() for t in str(entry.get("exc", "")).splitlines() if t.strip()]
            where = [_frame(f) for f in frames if f.startswith("File ") and "/openplace/" in f]
            text = frames[-1] if frames else str(entry.get("msg", ""))
            return text + (f" at {' <- '.join(reversed(where[-3:]))}" if where else "")
        return "(nothing logged)"

    def heal(self) -> None:
        """Resume whatever is paused (on the way out, whatever happened)."""
        if self._redis_paused:
            self.stack.redis.resume()
            self._redis_paused = False
        if self._pg_paused:
            self.stack.pg.resume()
            self._pg_paused = False

    def _begin(self, kind: str, target: str) -> Fault:
        fault = Fault(kind, target, time.monotonic())
        self.faults.append(fault)
        return fault

    async def _wait_recovered(self, fault: Fault, timeout: float) -> None:
        assert fault.heal is not None
        deadline = fault.heal + timeout
        while self.history.last_ok < fault.heal:
            if time.monotonic() > deadline:
                self.problems.append(
                    f"{fault.kind} at {self.history.rel(fault.start)} s: no placement "
                    f"acknowledged within {timeout:.0f} s of healing"
                )
                return
            await asyncio.sleep(0.02)

    async def _wait_healthy(self, name: str, port: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=1) as http:
            while time.monotonic() < deadline:
                try:
                    if (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.05)
        self.problems.append(f"{name} was not healthy {timeout:.0f} s after its restart")

    async def _active_persister(self, timeout: float = 10.0) -> str | None:
        """The name of the persister process holding the lock (standbys wait for it)."""
        deadline = time.monotonic() + timeout
        while True:
            port = None
            try:
                conn = await asyncpg.connect(self.stack.db_url, timeout=2)
                try:
                    port = await conn.fetchval(_LOCK_HOLDER, PERSISTER_LOCK)
                finally:
                    await conn.close()
            except (OSError, asyncpg.PostgresError, TimeoutError):
                pass
            if port is not None:
                name = await asyncio.to_thread(self._connected_from, int(port))
                if name is not None:
                    return name
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(0.2)

    def _connected_from(self, port: int) -> str | None:
        for name, proc in self.stack.cluster.procs.items():
            if not name.startswith("persister") or proc.poll() is not None:
                continue
            try:
                conns = psutil.Process(proc.pid).net_connections("tcp")
            except psutil.Error:
                continue
            if any(c.laddr and c.laddr.port == port for c in conns):
                return name
        return None
