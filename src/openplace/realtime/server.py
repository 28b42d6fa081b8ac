"""The lean websocket server of ``openplace realtime`` processes.

A realtime process does one thing: hold many idle connections and write the same
frames to all of them. So it runs no ASGI stack: each connection is one small
:class:`asyncio.Protocol` around ``websockets``' sans-I/O :class:`ServerProtocol`
(which does the handshake, the frame parsing and the close handshake), with no task,
queue or coroutine of its own. The hub writes pre-encoded frames straight to the
transport (:class:`~openplace.realtime.transport.TransportSubscriber`).

It also answers ``GET /healthz`` for load balancers.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson
from websockets.datastructures import Headers
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol

from openplace.realtime.hub import Hub
from openplace.realtime.session import (
    BINARY_REFUSED,
    TOO_MANY,
    Refusal,
    answer_text,
    client_address,
    parse_query,
)
from openplace.realtime.transport import TransportSubscriber

log = logging.getLogger(__name__)


def _json_response(status: int, body: bytes) -> Response:
    headers = Headers(
        [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
         ("Connection", "close")]
    )  # fmt: skip
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 429: "Too Many Requests"}
    return Response(status, reason.get(status, ""), headers, body)


class Connection(asyncio.Protocol):
    """One client connection; see the module docstring."""

    __slots__ = ("hub", "ip", "protocol", "subscriber", "transport", "trusted")

    def __init__(self, hub: Hub, max_message: int, trusted: frozenset[str]) -> None:
        self.hub = hub
        self.trusted = trusted
        self.protocol = ServerProtocol(max_size=max_message, logger=log)
        self.transport: Any = None
        self.subscriber: TransportSubscriber | None = None
        self.ip = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.ip = peer[0] if peer else "?"

    def data_received(self, data: bytes) -> None:
        protocol = self.protocol
        protocol.receive_data(data)
        for event in protocol.events_received():
            if isinstance(event, Request):
                self._handshake(event)
            elif isinstance(event, Frame):
                self._frame(event)
        self._flush()

    def eof_received(self) -> bool | None:
        self.protocol.receive_eof()
        self._flush()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        sub = self.subscriber
        if sub is not None:
            sub.closed = True
            self.hub.detach(sub)
            self.hub.release(self.ip)
            self.subscriber = None

    # -- events --------------------------------------------------------------------

    def _handshake(self, request: Request) -> None:
        url = urlsplit(request.path)
        if url.path == "/healthz":
            health = {"status": "ok", "seq": self.hub.sent, "clients": len(self.hub.subscribers)}
            self._refuse(_json_response(200, orjson.dumps(health)))
            return
        if url.path != "/ws":
            self._refuse(_json_response(404, b'{"error":"not_found","message":"try /ws"}'))
            return
        self.ip = client_address(self.ip, request.headers.get("X-Forwarded-For"), self.trusted)
        try:
            since, board = parse_query(dict(parse_qsl(url.query, keep_blank_values=True)))
            if not self.hub.admit(self.ip):
                raise TOO_MANY
        except Refusal as refusal:
            self._refuse(_json_response(refusal.status, refusal.body()))
            return
        response = self.protocol.accept(request)
        self.protocol.send_response(response)
        if response.status_code != 101:  # not a valid websocket upgrade
            self.hub.release(self.ip)
            self._flush()
            self.transport.close()
            return
        self._flush()
        self.subscriber = TransportSubscriber(self.transport, self.hub.send_buffer)
        task = asyncio.ensure_future(self.hub.attach(self.subscriber, since, board))
        task.add_done_callback(_log_failure)

    def _refuse(self, response: Response) -> None:
        self.protocol.send_response(response)
        self._flush()
        self.transport.close()

    def _frame(self, frame: Frame) -> None:
        sub = self.subscriber
        if sub is None or self.protocol.state is not State.OPEN:
            return
        if frame.opcode is Opcode.TEXT:
            sub.offer(answer_text(bytes(frame.data).decode("utf-8", "replace")))
        elif frame.opcode is Opcode.BINARY:
            sub.offer(BINARY_REFUSED)

    def _flush(self) -> None:
        protocol = self.protocol
        data = protocol.data_to_send()
        if data and not self.transport.is_closing():
            self.transport.write(b"".join(data))
        if protocol.state is not State.OPEN and self.subscriber is not None:
            self.subscriber.closed = True  # closing: no more data frames
        if protocol.close_expected() and not self.transport.is_closing():
            self.transport.close()


def _log_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("attaching a client failed", exc_info=task.exception())


async def serve(
    hub: Hub, host: str, port: int, *, max_message: int, trusted_proxies: str = "127.0.0.1"
) -> asyncio.Server:
    """Listen for websocket clients of ``hub`` on ``host:port``."""
    loop = asyncio.get_running_loop()
    trusted = frozenset(a.strip() for a in trusted_proxies.split(",") if a.strip())
    return await loop.create_server(
        lambda: Connection(hub, max_message, trusted),
        host, port, backlog=4096, reuse_address=True,
    )  # fmt: skip
