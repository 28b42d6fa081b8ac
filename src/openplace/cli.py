"""The ``openplace`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from openplace import logs
from openplace.config import Settings


def settings_from(args: argparse.Namespace) -> Settings:
    """The environment's settings, with ``--host``/``--port`` where the command has them."""
    settings = Settings.from_env()
    host = getattr(args, "host", None) or settings.host
    port = getattr(args, "port", None)
    return settings.with_(host=host, port=settings.port if port is None else port)


def _url(settings: Settings) -> str:
    host = settings.host
    shown = "localhost" if host in ("127.0.0.1", "0.0.0.0", "::") else host
    return f"http://{shown}:{settings.port}/"


def serve(args: argparse.Namespace, settings: Settings) -> int:
    """Everything in one process: embedded, or all roles on Redis + PostgreSQL."""
    from openplace.api.server import run_uvicorn
    from openplace.app import create_app

    if settings.distributed:
        print("openplace: distributed mode (Redis + PostgreSQL); run `openplace persister` too")
    else:
        print(f"openplace: data in {settings.data_dir}", flush=True)
    app = create_app(settings)
    print(f"openplace: canvas at {_url(settings)}", flush=True)
    run_uvicorn(app, settings)
    return 0


Command = Callable[[argparse.Namespace, Settings], int]


def _distributed(name: str) -> Command:
    """A command of :mod:`openplace.distributed.commands`, imported when it runs."""

    def run(args: argparse.Namespace, settings: Settings) -> int:
        from openplace.distributed import commands

        command: Command = getattr(commands, name)
        return command(args, settings)

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="openplace", description=__doc__)
    parser.add_argument(
        "--log-level", default=None, help="DEBUG, INFO, WARNING or ERROR (OPENPLACE_LOG_LEVEL)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func, help_ in [
        ("serve", serve, "run the whole canvas in one process (embedded mode)"),
        ("api", _distributed("role"), "distributed: an HTTP API process (also serves the page)"),
        ("realtime", _distributed("role"), "distributed: a websocket fan-out process"),
    ]:
        p = sub.add_parser(name, help=help_)
        p.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
        p.add_argument("--port", type=int, default=None, help="port (default 8000)")
        p.set_defaults(func=func)
    sub.add_parser("persister", help="distributed: commit placements, restore Redis").set_defaults(
        func=_distributed("persister")
    )
    sub.add_parser("restore", help="distributed: rebuild the Redis board now").set_defaults(
        func=_distributed("restore")
    )
    p = sub.add_parser("cluster", help="distributed: a local stack behind nginx")
    p.add_argument("--api", type=int, default=2, help="API processes (default 2)")
    p.add_argument("--realtime", type=int, default=2, help="realtime processes (default 2)")
    p.add_argument("--port", type=int, default=8000, help="nginx port (default 8000)")
    p.set_defaults(func=_distributed("cluster"))
    from openplace.history import commands as history
    from openplace.moderation import commands as moderation
    from openplace.templates import commands as templates

    history.add_arguments(sub)
    moderation.add_arguments(sub)
    templates.add_arguments(sub)
    args = parser.parse_args(argv)
    try:
        settings = settings_from(args)
        logs.setup((args.log_level or settings.log_level).upper())
        return int(args.func(args, settings))
    except (ValueError, FileNotFoundError) as exc:  # configuration errors, no canvas yet
        print(f"openplace: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
