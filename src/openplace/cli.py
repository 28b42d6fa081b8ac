"""The ``openplace`` command."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING

import uvicorn

from openplace import logs
from openplace.config import Settings

if TYPE_CHECKING:
    from openplace.storage.distributed.persister import Persister

log = logging.getLogger("openplace")


def _settings(args: argparse.Namespace) -> Settings:
    settings = Settings.from_env()
    host = getattr(args, "host", None) or settings.host
    port = getattr(args, "port", None)
    return settings.with_(host=host, port=settings.port if port is None else port)


def uvicorn_config(app: object, settings: Settings) -> uvicorn.Config:
    """How every openplace process runs uvicorn (also used by the tests): httptools with
    openplace's limits (:mod:`openplace.api.limits`), and the transport-exposing
    websocket protocol."""
    import math

    from openplace.api.limits import guarded_protocol
    from openplace.realtime.transport import WSProtocol

    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        http=guarded_protocol(settings),
        timeout_keep_alive=math.ceil(settings.http_keepalive_timeout_seconds),
        ws=WSProtocol,
        ws_max_size=settings.ws_max_message_bytes,
        ws_per_message_deflate=False,
        ws_ping_interval=None,  # clients ping; a server ping per client costs at 20k
        proxy_headers=True,
        forwarded_allow_ips=settings.trusted_proxies,
        server_header=False,
        backlog=4096,
    )


def _run_uvicorn(app: object, settings: Settings) -> None:
    from openplace.api.limits import raise_fd_limit

    raise_fd_limit()
    uvicorn.Server(uvicorn_config(app, settings)).run()


def _url(settings: Settings) -> str:
    host = settings.host
    shown = "localhost" if host in ("127.0.0.1", "0.0.0.0", "::") else host
    return f"http://{shown}:{settings.port}/"


def serve(args: argparse.Namespace) -> int:
    """Everything in one process: embedded, or all roles on Redis + PostgreSQL."""
    from openplace.app import create_app

    settings = _settings(args)
    if settings.distributed:
        print("openplace: distributed mode (Redis + PostgreSQL); run `openplace persister` too")
    else:
        print(f"openplace: data in {settings.data_dir}", flush=True)
    app = create_app(settings)
    print(f"openplace: canvas at {_url(settings)}", flush=True)
    _run_uvicorn(app, settings)
    return 0


def role(args: argparse.Namespace) -> int:
    """One distributed role: ``api`` (with the page) or ``realtime``."""
    from openplace.app import create_app

    settings = _settings(args)
    if not settings.distributed:
        raise ValueError(
            f"`openplace {args.command}` needs OPENPLACE_REDIS_URL and OPENPLACE_DATABASE_URL "
            "(use `openplace serve` for embedded mode)"
        )
    log.info("starting %s on %s:%d", args.command, settings.host, settings.port)
    if args.command == "realtime":
        import uvloop

        from openplace.api.limits import raise_fd_limit

        raise_fd_limit()

        from openplace.realtime.process import run_realtime

        uvloop.run(run_realtime(settings))
    else:
        _run_uvicorn(create_app(settings, {"api", "web"}), settings)
    return 0


def _persister(settings: Settings) -> Persister:
    from openplace.core.board import Geometry
    from openplace.storage.distributed.persister import Persister

    if not settings.distributed:
        raise ValueError("needs OPENPLACE_REDIS_URL and OPENPLACE_DATABASE_URL")
    return Persister(
        settings.redis_url or "", settings.database_url or "",
        Geometry(settings.width, settings.height), settings.cooldown_seconds,
        snapshot_every=settings.snapshot_every,
    )  # fmt: skip


def persister(args: argparse.Namespace) -> int:
    """Commit placements to PostgreSQL and keep Redis restored (one active at a time)."""
    import asyncio
    import signal

    p = _persister(Settings.from_env())

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if not await p.connect(stop=stop):
            return  # stopped while standing by
        log.info("persister active")
        try:
            await p.run(stop)
        finally:
            await p.close()

    asyncio.run(main())
    return 0


def restore(args: argparse.Namespace) -> int:
    """Rebuild the Redis board from PostgreSQL now."""
    import asyncio

    import redis.asyncio as aioredis

    from openplace.storage.distributed import keys

    settings = Settings.from_env()
    p = _persister(settings)

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
                say(f"done: board is now epoch {now.decode()}")
                await redis.aclose()
                return 0
        say("the persister did not restore within 60 s")
        await redis.aclose()
        return 1

    return asyncio.run(main())


def cluster(args: argparse.Namespace) -> int:
    """A local stack: persister, N API, M realtime processes and nginx in front."""
    import secrets
    import signal
    import time

    from openplace.cluster import Cluster

    settings = Settings.from_env()
    if not settings.distributed:
        raise ValueError("needs OPENPLACE_REDIS_URL and OPENPLACE_DATABASE_URL")
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
        print(f"openplace: canvas at {c.url}/  (nginx; Ctrl-C stops everything)", flush=True)
        try:
            while True:
                time.sleep(1)
                c._check_alive()
        except KeyboardInterrupt:
            pass
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="openplace", description=__doc__)
    parser.add_argument(
        "--log-level", default=None, help="DEBUG, INFO, WARNING or ERROR (OPENPLACE_LOG_LEVEL)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func, help_ in [
        ("serve", serve, "run the whole canvas in one process (embedded mode)"),
        ("api", role, "distributed: an HTTP API process (also serves the page)"),
        ("realtime", role, "distributed: a websocket fan-out process"),
    ]:
        p = sub.add_parser(name, help=help_)
        p.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
        p.add_argument("--port", type=int, default=None, help="port (default 8000)")
        p.set_defaults(func=func)
    sub.add_parser("persister", help="distributed: commit placements, restore Redis").set_defaults(
        func=persister
    )
    sub.add_parser("restore", help="distributed: rebuild the Redis board now").set_defaults(
        func=restore
    )
    p = sub.add_parser("cluster", help="distributed: a local stack behind nginx")
    p.add_argument("--api", type=int, default=2, help="API processes (default 2)")
    p.add_argument("--realtime", type=int, default=2, help="realtime processes (default 2)")
    p.add_argument("--port", type=int, default=8000, help="nginx port (default 8000)")
    p.set_defaults(func=cluster)
    args = parser.parse_args(argv)
    try:
        logs.setup((args.log_level or Settings.from_env().log_level).upper())
        return int(args.func(args))
    except ValueError as exc:  # configuration errors
        print(f"openplace: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
