"""The distributed mode's commands: ``api``, ``realtime``, ``persister``, ``restore`` and
``cluster``. Each gets the parsed arguments and the settings from :mod:`openplace.cli`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import secrets
import signal
import time

import redis.asyncio as aioredis

from openplace.api.limits import raise_fd_limit
from openplace.api.server import run_uvicorn
from openplace.config import Settings
from openplace.core.board import Geometry
from openplace.distributed import keys
from openplace.distributed.cluster import Cluster
from openplace.distributed.persister import Persister

log = logging.getLogger("openplace")


def _needs_distributed(settings: Settings, command: str) -> None:
    if not settings.distributed:
        raise ValueError(
            f"`openplace {command}` needs OPENPLACE_REDIS_URL and OPENPLACE_DATABASE_URL "
            "(use `openplace serve` for embedded mode)"
        )


def role(args: argparse.Namespace, settings: Settings) -> int:
    """One distributed role: ``api`` (with the page) or ``realtime``."""
    from openplace.app import create_app

    _needs_distributed(settings, args.command)
    log.info("starting %s on %s:%d", args.command, settings.host, settings.port)
    if args.command == "realtime":
        import uvloop

        from openplace.distributed.fanout import run_realtime

        raise_fd_limit()
        uvloop.run(run_realtime(settings))
    else:
        run_uvicorn(create_app(settings, {"api", "web"}), settings, settings.drain_seconds)
    return 0


def _persister(settings: Settings, command: str) -> Persister:
    _needs_distributed(settings, command)
    return Persister(
        settings.redis_url or "", settings.database_url or "",
        Geometry(settings.width, settings.height), settings.cooldown_seconds,
        snapshot_every=settings.snapshot_every,
    )  # fmt: skip


def persister(args: argparse.Namespace, settings: Settings) -> int:
    """Commit placements to PostgreSQL and keep Redis restored (one active at a time)."""
    p = _persister(settings, "persister")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        http = await _persister_http(p, settings)
        try:
            if not await p.connect(stop=stop):
                return  # stopped while standing by
            log.info("persister active")
            try:
                await p.run(stop)
            finally:
                await p.close()
        finally:
            if http is not None:
                http.close()

    asyncio.run(main())
    return 0


async def _persister_http(p: Persister, settings: Settings) -> asyncio.Server | None:
    """/metrics, /livez and /readyz on OPENPLACE_PERSISTER_METRICS_PORT (0: none). A
    port in use is logged, not fatal: persisting matters more than being watched."""
    port = settings.persister_metrics_port
    if not port:
        return None
    try:
        server = await p.serve_http(settings.host, port, settings.metrics_from)
    except OSError as exc:
        log.error("persister metrics not served on %s:%d: %s", settings.host, port, exc)
        return None
    log.info("persister metrics on %s:%d/metrics", settings.host, port)
    return server


def restore(args: argparse.Namespace, settings: Settings) -> int:
    """Rebuild the Redis board from PostgreSQL now."""
    p = _persister(settings, "restore")

    def say(message: str) -> None:
        print(f"restore: {message}", flush=True)

    async def main() -> int:
        if await p.connect(wait_for_lock=False):
            try:
                seq = p.committed
                say(f"no persister running; restoring here (committed seq {seq})")
                took = await p.restore(say)
                say(f"done in {took:.3f} s")
            finally:
                await p.close()
            return 0
        say("asking the running persister to restore")
        redis = aioredis.from_url(settings.redis_url or "")
        before = await redis.get(keys.EPOCH)
        await redis.set(keys.RESTORE_REQUEST, "1")
        for _ in range(600):
            await asyncio.sleep(0.1)
            now = await redis.get(keys.EPOCH)
            if now is not None and now != before:
                say(f"done: board is now epoch {keys.text(now)}")
                await redis.aclose()
                return 0
        say("the persister did not restore within 60 s")
        await redis.aclose()
        return 1

    return asyncio.run(main())


def cluster(args: argparse.Namespace, settings: Settings) -> int:
    """A local stack: persister, N API, M realtime processes and nginx in front."""
    _needs_distributed(settings, "cluster")
    # Every API process must sign and check tokens with the same secret.
    env = {} if settings.secret else {"OPENPLACE_SECRET": secrets.token_urlsafe(32)}

    def interrupt(signum: int, frame: object) -> None:
        # Once: a second signal must not cut the orderly stop of every child short.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    cluster = Cluster(settings, api=args.api, realtime=args.realtime, port=args.port, env=env)
    with cluster as c:
        print(f"openplace: {args.api} API + {args.realtime} realtime processes, logs in "
              f"{c.run_dir}")  # fmt: skip
        for i, port in enumerate(c.api_ports, 1):
            print(f"openplace:   api{i} on http://127.0.0.1:{port}/")
        for i, port in enumerate(c.realtime_ports, 1):
            print(f"openplace:   realtime{i} on ws://127.0.0.1:{port}/ws")
        for name, port in c.persister_ports.items():
            print(f"openplace:   {name} metrics on http://127.0.0.1:{port}/metrics")
        print(f"openplace: canvas at {c.url}/  (nginx; Ctrl-C stops everything)", flush=True)
        try:
            while True:
                time.sleep(1)
                c._check_alive()
        except KeyboardInterrupt:
            pass
    return 0
