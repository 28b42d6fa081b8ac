"""The fast path from the hub to the socket: pre-encoded frames, written straight to
each connection's transport.

A server-to-client websocket frame is not masked, so its bytes are the same for every
client: the hub encodes each message once (payload *and* framing) and this module
writes that one ``bytes`` object to every transport. No per-client task, queue or
encoding, which is what lets one process feed thousands of clients.

uvicorn keeps the websocket handshake, incoming frames, pings and closing; the only
change to it is :class:`WSProtocol`, which hands the connection's transport to the app
through an ASGI scope extension.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Close, Frame, Opcode

EXTENSION = "openplace.transport"


class WSProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websocket protocol, exposing its transport to the app."""

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:  # the app task is created but has not run yet
            scope["extensions"][EXTENSION] = {"transport": self.transport}


def encode(message: bytes | str) -> bytes:
    """A complete, unmasked websocket frame: binary for bytes, text for str."""
    if isinstance(message, str):
        return Frame(Opcode.TEXT, message.encode()).serialize(mask=False, extensions=[])
    return Frame(Opcode.BINARY, message).serialize(mask=False, extensions=[])


def close_frame(code: int, reason: str) -> bytes:
    return Frame(Opcode.CLOSE, Close(code, reason).serialize()).serialize(mask=False, extensions=[])


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
            asyncio.get_running_loop().call_later(5.0, transport.abort)
