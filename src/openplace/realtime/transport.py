"""The fast path from the hub to the socket: pre-encoded frames, written straight to
each connection's transport.

A server-to-client websocket frame is not masked, so its bytes are the same for every
client: the hub encodes each message once (payload *and* framing) and this module
writes that one ``bytes`` object to every transport. No per-client task, queue or
encoding, which is what lets one process feed thousands of clients.

uvicorn keeps the websocket handshake, incoming frames, pings and closing.
:class:`WSProtocol` changes it where a hostile client could hurt: it hands the
connection's transport to the app through an ASGI scope extension, counts the pongs it
writes against the client's output budget, answers an upgrade request websockets cannot
parse (e.g. a line over 8 KiB) with a JSON error instead of never, closes on invalid
UTF-8 with 1007 without logging a traceback, and does not log an error for every
refused upgrade.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Close, CloseCode, Frame, Opcode

from openplace.realtime.session import handshake_refusal

EXTENSION = "openplace.transport"
# Before the app has bound the client's budget (a moment after the handshake), pings
# are answered only while the client's backlog is below this.
UNBOUND_BACKLOG = 64 * 1024


class WSProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websocket protocol, hardened and exposing its transport to the app.

    The scope extension :data:`EXTENSION` holds ``transport`` and ``bind``: the app
    calls ``bind(subscriber)`` and from then on pongs go through the subscriber, so
    they count against the same budget as everything else sent to the client.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sink: TransportSubscriber | None = None

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:  # the app task is created but has not run yet
            scope["extensions"][EXTENSION] = {"transport": self.transport, "bind": self.bind}

    def bind(self, sink: TransportSubscriber) -> None:
        self.sink = sink

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        conn = self.conn
        if conn.handshake_exc is not None and not self.handshake_initiated:
            # websockets could not parse the request and queued a plain-text answer
            # that uvicorn never writes: answer in JSON, and close.
            conn.data_to_send()
            self.handshake_initiated = self.handshake_complete = self.close_sent = True
            if not self.transport.is_closing():
                self.transport.write(handshake_refusal(conn.handshake_exc).http())
                self.transport.close()

    async def send(self, message: Any) -> None:
        await super().send(message)
        if message["type"] == "websocket.http.response.body" and not message.get("more_body"):
            # uvicorn forgets that a denial response completes the handshake, and logs
            # an error for every refused upgrade.
            self.handshake_complete = True

    def handle_ping(self) -> None:
        pong = b"".join(self.conn.data_to_send())
        if self.sink is not None:
            self.sink.write(pong)  # over the budget: closed with 4008, like a slow reader
        elif self.transport.get_write_buffer_size() < UNBOUND_BACKLOG:
            self.transport.write(pong)

    def send_receive_event_to_app(self) -> None:
        if self.curr_msg_data_type == "text" and not self.close_sent:
            try:
                b"".join(self.frames).decode()
            except UnicodeDecodeError:  # uvicorn would log a traceback per message
                self.frames = []
                self.conn.fail(CloseCode.INVALID_DATA, "invalid UTF-8")
                self.handle_parser_exception()
                return
        super().send_receive_event_to_app()


def encode(message: bytes | str) -> bytes:
    """A complete, unmasked websocket frame: binary for bytes, text for str."""
    if isinstance(message, str):
        return Frame(Opcode.TEXT, message.encode()).serialize(mask=False, extensions=[])
    return Frame(Opcode.BINARY, message).serialize(mask=False, extensions=[])


def close_frame(code: int, reason: str) -> bytes:
    return Frame(Opcode.CLOSE, Close(code, reason).serialize()).serialize(mask=False, extensions=[])


# A dropped client's close frame waits this long behind its backlog, then the socket goes.
ABORT_AFTER_CLOSE_SECONDS = 5.0


class TransportSubscriber:
    """A client fed by direct writes of frames encoded once for everyone.

    Backpressure is the transport's own write buffer: past ``limit`` bytes (plus what a
    replay put there), the client is sent close code 4008 and dropped.
    """

    __slots__ = ("allowance", "close_reason", "closed", "limit", "transport")

    def __init__(self, transport: asyncio.Transport, limit: int) -> None:
        self.transport = transport
        self.limit = limit
        self.allowance = limit
        self.closed = False
        self.close_reason = ""

    def offer(self, message: bytes | str, *, bounded: bool = True) -> None:
        """Send a message to this client alone (it is encoded here)."""
        self.write(encode(message), message, bounded=bounded)

    def write(self, frame: bytes, message: bytes | str = b"", *, bounded: bool = True) -> None:
        """Write one pre-encoded frame (see :func:`encode`); ``message`` is unused."""
        if self.closed:
            return
        transport = self.transport
        if transport.is_closing():
            self.close("connection closed")
            return
        transport.write(frame)
        buffered = transport.get_write_buffer_size()
        if not bounded:
            self.allowance = max(self.allowance, buffered + self.limit)
        elif buffered > self.allowance:
            self.close("too slow", code=4008)
        elif buffered < self.limit:
            self.allowance = self.limit

    def close(self, reason: str, code: int = 1001) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        transport = self.transport
        if not transport.is_closing():
            transport.write(close_frame(code, reason))
            transport.close()
            # A client that never reads would keep the buffer (and the socket) forever.
            asyncio.get_running_loop().call_later(ABORT_AFTER_CLOSE_SECONDS, transport.abort)
