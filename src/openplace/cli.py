"""The ``openplace`` command."""

from __future__ import annotations

import argparse
import logging
import sys

import uvicorn

from openplace import logs
from openplace.config import Settings

log = logging.getLogger("openplace")


def serve(args: argparse.Namespace) -> int:
    from openplace.app import create_app

    settings = Settings.from_env()
    host = args.host or settings.host
    port = args.port if args.port is not None else settings.port
    settings = settings.with_(host=host, port=port)
    app = create_app(settings)
    shown = "localhost" if host in ("127.0.0.1", "0.0.0.0", "::") else host
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        ws_max_size=settings.ws_max_message_bytes,
        ws_per_message_deflate=False,
        proxy_headers=True,
        server_header=False,
    )
    server = uvicorn.Server(config)
    print(f"openplace: data in {settings.data_dir}", flush=True)
    print(f"openplace: canvas at http://{shown}:{port}/", flush=True)
    server.run()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="openplace", description=__doc__)
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run the whole canvas in one process (embedded mode)")
    p.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default 8000)")
    p.set_defaults(func=serve)
    args = parser.parse_args(argv)
    logs.setup(args.log_level.upper())
    try:
        return int(args.func(args))
    except ValueError as exc:  # configuration errors
        print(f"openplace: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
