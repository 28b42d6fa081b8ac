"""A ``/ws`` server in a process of its own, for the resource tests (they measure its
memory): ``python -m tests.ws_server_child embedded|lean PORT``.

Settings come from ``OPENPLACE_*`` variables (``OPENPLACE_DATA_DIR`` is required).
``CHILD_SNDBUF=<bytes>`` sets the kernel send buffer of every client socket, as on a
slow network: otherwise the kernel alone holds megabytes for a client that does not read
(up to ``net.ipv4.tcp_wmem``) before the server's own budget is reached.
``embedded`` runs the app under uvicorn as ``openplace serve`` does; ``lean`` runs the
lean server of realtime processes on an embedded store. Commands on stdin, one a line,
each answered with one line on stdout:

- ``place N``: N placements by new users (cooldown 0); answers the last seq;
- ``stats``: JSON: clients, the sum and the largest of their unsent backlogs;
- ``quit``.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from openplace.config import Settings
from openplace.core.board import Geometry
from openplace.embedded.store import EmbeddedStore
from openplace.realtime.hub import Hub
from openplace.state import state_of

Stop = Callable[[], Awaitable[None]]


async def _lean(settings: Settings) -> tuple[EmbeddedStore, Hub, Stop]:
    from openplace.distributed.websocket_server import serve
    from openplace.realtime.process import build_hub

    store = EmbeddedStore(settings.data_dir / "lean.sqlite3", Geometry(settings.width,
                          settings.height), settings.cooldown_seconds)  # fmt: skip
    await store.open()
    hub = build_hub(settings, store)
    await hub.start()
    server = await serve(hub, settings.host, settings.port,
                         max_message=settings.ws_max_message_bytes, trusted_proxies="")  # fmt: skip

    async def stop() -> None:
        server.close()
        hub.stop()
        await store.close()

    return store, hub, stop


async def _embedded(settings: Settings) -> tuple[EmbeddedStore, Hub, Stop]:
    import uvicorn

    from openplace.api.server import uvicorn_config
    from openplace.app import create_app

    app = create_app(settings)
    server = uvicorn.Server(uvicorn_config(app, settings))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)

    async def stop() -> None:
        server.should_exit = True
        await task

    state = state_of(app)
    assert isinstance(state.store, EmbeddedStore)
    return state.store, state.hub, stop


def _small_kernel_buffers(protocol: type[Any], size: int) -> None:
    original = protocol.connection_made

    def connection_made(self: Any, transport: Any) -> None:
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
        original(self, transport)

    protocol.connection_made = connection_made


async def main(kind: str, port: int) -> None:
    if sndbuf := int(os.environ.get("CHILD_SNDBUF", "0")):
        from openplace.distributed.websocket_server import Connection
        from openplace.realtime.transport import WSProtocol

        _small_kernel_buffers(Connection if kind == "lean" else WSProtocol, sndbuf)
    settings = Settings.from_env().with_(port=port, host="127.0.0.1")
    store, hub, stop = await (_lean if kind == "lean" else _embedded)(settings)
    loop = asyncio.get_running_loop()
    placed = 0
    print("ready", flush=True)
    while line := (await loop.run_in_executor(None, sys.stdin.readline)).split():
        if line[0] == "place":
            n = int(line[1])
            done = await asyncio.gather(*[
                store.place(f"r{placed + i}", (placed + i) % settings.pixels, i % 16, "127.0.0.1")
                for i in range(n)
            ])  # fmt: skip
            placed += n
            print(max(p.seq for p in done), flush=True)
        elif line[0] == "stats":
            backlogs = [s.transport.get_write_buffer_size() for s in list(hub.subscribers)
                        if hasattr(s, "transport")]  # fmt: skip
            stats = {"clients": len(backlogs), "backlog": sum(backlogs),
                     "largest": max(backlogs, default=0)}  # fmt: skip
            print(orjson.dumps(stats).decode(), flush=True)
        else:
            break
    await stop()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
