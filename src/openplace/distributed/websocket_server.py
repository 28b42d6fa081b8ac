"""The lean websocket server of ``openplace realtime`` processes.

A realtime process does one thing: hold many idle connections and write the same
frames to all of them. So it runs no ASGI stack: each connection is one small
:class:`asyncio.Protocol` around ``websockets``' sans-I/O :class:`ServerProtocol`
(which does the handshake, the frame parsing and the close handshake), with no task,
queue or coroutine of its own. The hub writes pre-encoded frames straight to the
transport (:class:`~openplace.realtime.transport.TransportSubscriber`).

It also answers ``GET /healthz`` for load balancers, ``/livez`` and ``/readyz`` for
orchestrators and ``/metrics`` for Prometheus (to ``OPENPLACE_METRICS_FROM`` only).

Hostile clients: a connection holds its address's slot from accept (a trusted proxy's
connections from the handshake, by forwarded address), the upgrade request must be
complete within ``handshake_timeout`` and ``max_handshake`` bytes, every byte written
to an open connection (pongs included) counts against its output budget, fragmented
messages are reassembled (within ``max_message``) and any malformed input is answered
with a JSON error or a close code, never a traceback.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import urlsplit

import orjson
from uvicorn.middleware.proxy_headers import _TrustedHosts
from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol

from openplace.api.errors import Refusal, http_response
from openplace.config import METRICS_FROM, Network, address_in, networks
from openplace.distributed.feed import RedisFeed
from openplace.distributed.store import dependency_problems
from openplace.observe import health, metrics
from openplace.observe.server import response
from openplace.realtime.hub import Hub
from openplace.realtime.session import (
    BINARY_REFUSED,
    TOO_LARGE,
    TOO_MANY,
    TOO_SLOW,
    answer_text,
    client_address,
    handshake_refusal,
    parse_query,
    trusted_hosts,
)
from openplace.realtime.transport import TransportSubscriber

log = logging.getLogger(__name__)

NOT_FOUND = Refusal(404, "not_found", "try /ws")
NOT_ALLOWED = Refusal(405, "method_not_allowed", "method not allowed")
LINGER = 1.0  # seconds an answered connection waits for the client to close
OPERATIONS = ("/livez", "/readyz", "/metrics")
REGISTRY = metrics.registry(frozenset({"realtime"}), True)


async def not_ready(hub: Hub) -> health.Problems:
    """What keeps this realtime process from serving: its feed follows the committed
    placements of the board Redis holds, and Redis and PostgreSQL answer. Tells the
    hub the committed watermark on the way (the fan-out lag)."""
    problems: health.Problems = {}
    if not hub.following():
        problems["feed"] = "not following the committed placements"
    feed = hub.feed
    if isinstance(feed, RedisFeed):

        def watermark(committed: int) -> None:
            hub.watermark = committed

        problems.update(
            await dependency_problems(feed.redis, feed.pg, feed, hub.board_id, watermark)
        )
    return problems


async def operations_answer(hub: Hub, path: str, head: bool) -> bytes:
    """The HTTP answer of ``/readyz`` or ``/metrics`` (the caller checked who asks)."""
    problems = await not_ready(hub)
    if path == "/metrics":
        health.record(problems)
        return response(200, metrics.render(REGISTRY), metrics.CONTENT_TYPE, head)
    status, body = health.answer(problems)
    return http_response(status, body, [("Cache-Control", "no-store")], head=head)


class Connection(asyncio.Protocol):
    """One client connection; see the module docstring."""

    __slots__ = ("answered", "deadline", "fragments", "hub", "ip", "limits", "protocol",
                 "received", "slot", "subscriber", "transport", "trusted")  # fmt: skip

    def __init__(self, hub: Hub, limits: Limits, trusted: _TrustedHosts) -> None:
        self.hub = hub
        self.limits = limits
        self.trusted = trusted
        self.protocol = ServerProtocol(max_size=limits.max_message, logger=log)
        self.transport: Any = None
        self.subscriber: TransportSubscriber | None = None
        self.ip = ""
        self.slot: str | None = None  # the address whose connection slot this holds
        self.deadline: asyncio.TimerHandle | None = None
        self.fragments: list[bytes] | None = None  # a text message still arriving
        self.received = 0  # bytes of the upgrade request so far
        self.answered = False  # with HTTP: the rest of the input is discarded

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.ip = peer[0] if peer else "?"
        if self.ip not in self.trusted:  # a proxy's clients are told apart by the request
            if not self.hub.admit(self.ip):
                self._answer(TOO_MANY.http())
                return
            self.slot = self.ip
        loop = asyncio.get_running_loop()
        self.deadline = loop.call_later(self.limits.handshake_timeout, self._too_late)

    def data_received(self, data: bytes) -> None:
        if self.answered or self.transport.is_closing():
            return
        protocol = self.protocol
        if protocol.state is State.CONNECTING:
            self.received += len(data)
        protocol.receive_data(data)
        for event in protocol.events_received():
            if isinstance(event, Request):
                self._handshake(event)
            elif isinstance(event, Frame):
                self._frame(event)
        if self.answered:
            return
        if protocol.state is State.CONNECTING:
            if protocol.handshake_exc is not None:  # unparseable: websockets has no JSON
                self._answer(handshake_refusal(protocol.handshake_exc).http())
                return
            if self.received > self.limits.max_handshake:
                self._answer(TOO_LARGE.http())
                return
        self._flush()

    def eof_received(self) -> bool | None:
        if not (self.answered or self.transport.is_closing()):
            self.protocol.receive_eof()
            self._flush()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        sub = self.subscriber
        if sub is not None:
            sub.closed = True
            self.hub.detach(sub)
            self.subscriber = None
        if self.slot is not None:
            self.hub.release(self.slot)
            self.slot = None

    # -- events --------------------------------------------------------------------

    def _handshake(self, request: Request) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        size = len(request.path) + sum(len(k) + len(v) + 4 for k, v in request.headers.raw_items())
        if size > self.limits.max_handshake:
            self._refuse(TOO_LARGE.http())
            return
        url = urlsplit(request.path)
        if url.path == "/healthz":
            if request.method not in ("GET", "HEAD"):
                self._refuse(NOT_ALLOWED.http(allow="GET, HEAD"))
                return
            health = {"status": "ok", "seq": self.hub.sent, "clients": len(self.hub.subscribers)}
            self._refuse(http_response(200, orjson.dumps(health), head=request.method == "HEAD"))
            return
        if url.path in OPERATIONS:
            self._operations(url.path, request.method)
            return
        if url.path != "/ws":
            self._refuse(NOT_FOUND.http())
            return
        if request.method != "GET":
            self._refuse(NOT_ALLOWED.http(allow="GET"))
            return
        try:
            since, board = parse_query(url.query)
            if self.slot is None:  # from a trusted proxy: count the client it names
                ip = client_address(self.ip, request.headers.get("X-Forwarded-For"), self.trusted)
                if not self.hub.admit(ip):
                    raise TOO_MANY
                self.slot = self.ip = ip
        except Refusal as refusal:
            self._refuse(refusal.http())
            return
        response = self.protocol.accept(request)
        if response.status_code != 101:  # not a valid websocket upgrade
            self._refuse(response)
            return
        self.protocol.send_response(response)
        self._flush()
        self.subscriber = TransportSubscriber(self.transport, self.hub.send_buffer)
        task = asyncio.ensure_future(self.hub.attach(self.subscriber, since, board))
        task.add_done_callback(_log_failure)

    def _operations(self, path: str, method: str) -> None:
        if method not in ("GET", "HEAD"):
            self._refuse(NOT_ALLOWED.http(allow="GET, HEAD"))
            return
        head = method == "HEAD"
        if path == "/livez":
            self._refuse(http_response(200, health.LIVE, [("Cache-Control", "no-store")],
                                       head=head))  # fmt: skip
            return
        if path == "/metrics" and not address_in(self.ip, self.limits.metrics_from):
            self._refuse(NOT_FOUND.http())
            return
        self.answered = True  # the rest of the input is not read
        task = asyncio.ensure_future(operations_answer(self.hub, path, head))
        task.add_done_callback(self._operations_done)

    def _operations_done(self, task: asyncio.Future[bytes]) -> None:
        if task.cancelled() or self.transport.is_closing():
            return
        exc = task.exception()
        if exc is not None:
            log.error("answering an operations request failed", exc_info=exc)
            self._refuse(http_response(500, b'{"error":"internal"}'))
            return
        self._refuse(task.result())

    def _refuse(self, response: bytes | Response) -> None:
        """Answer the upgrade request with an HTTP error (the slot goes on close)."""
        self.protocol.data_to_send()
        if isinstance(response, Response):
            response = response.serialize()
        self._answer(response)

    def _answer(self, data: bytes) -> None:
        """Send an HTTP answer and end the connection.

        Only the sending side is shut: closing a socket that still has input to read
        makes the kernel send a reset, which can destroy the answer before the client
        reads it. The rest of the input is discarded until the client closes, for at
        most :data:`LINGER` seconds.
        """
        self.answered = True
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        transport = self.transport
        transport.write(data)
        if transport.can_write_eof():
            transport.write_eof()
        else:
            transport.close()
        asyncio.get_running_loop().call_later(LINGER, transport.abort)

    def _too_late(self) -> None:
        self.deadline = None
        if self.protocol.state is State.CONNECTING and not self.answered:
            self._answer(TOO_SLOW.http())

    def _frame(self, frame: Frame) -> None:
        sub = self.subscriber
        if sub is None or self.protocol.state is not State.OPEN:
            return
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            # websockets enforces the order of fragments and max_message over all of them.
            if not frame.fin:
                self.fragments = [bytes(frame.data)] if opcode is Opcode.TEXT else []
                return
            if opcode is Opcode.BINARY:
                sub.offer(BINARY_REFUSED)
                return
            self._text(bytes(frame.data))
        elif opcode is Opcode.CONT:
            fragments = self.fragments
            if fragments is None:
                return
            if fragments:  # a text message (binary ones are not kept)
                fragments.append(bytes(frame.data))
            if frame.fin:
                self.fragments = None
                if fragments:
                    self._text(b"".join(fragments))
                else:
                    sub.offer(BINARY_REFUSED)

    def _text(self, data: bytes) -> None:
        assert self.subscriber is not None
        try:
            text = data.decode()
        except UnicodeDecodeError:
            self.protocol.fail(CloseCode.INVALID_DATA, "invalid UTF-8")
            return
        self.subscriber.offer(answer_text(text))

    def _flush(self) -> None:
        protocol = self.protocol
        data = b"".join(protocol.data_to_send())
        transport = self.transport
        sub = self.subscriber
        if data and not transport.is_closing():
            if sub is not None and protocol.state is State.OPEN:
                # Pongs: the client's budget, as for everything else it is sent.
                sub.write(data)
            else:
                transport.write(data)
        if protocol.state is not State.OPEN and sub is not None:
            sub.closed = True  # closing: no more data frames
        if protocol.close_expected() and not transport.is_closing():
            transport.close()


class Limits:
    """What one connection may use before it is refused or closed."""

    __slots__ = ("handshake_timeout", "max_handshake", "max_message", "metrics_from")

    def __init__(
        self,
        max_message: int,
        max_handshake: int,
        handshake_timeout: float,
        metrics_from: tuple[Network, ...] = (),
    ) -> None:
        self.max_message = max_message
        self.max_handshake = max_handshake
        self.handshake_timeout = handshake_timeout
        self.metrics_from = metrics_from  # who may read /metrics


def _log_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("attaching a client failed", exc_info=task.exception())


async def serve(
    hub: Hub,
    host: str,
    port: int,
    *,
    max_message: int,
    trusted_proxies: str = "127.0.0.1",
    max_handshake: int = 8 * 1024,
    handshake_timeout: float = 10.0,
    metrics_from: str = METRICS_FROM,
) -> asyncio.Server:
    """Listen for websocket clients of ``hub`` on ``host:port``."""
    loop = asyncio.get_running_loop()
    trusted = trusted_hosts(trusted_proxies)
    limits = Limits(max_message, max_handshake, handshake_timeout, networks(metrics_from))
    return await loop.create_server(
        lambda: Connection(hub, limits, trusted),
        host, port, backlog=4096, reuse_address=True,
    )  # fmt: skip
