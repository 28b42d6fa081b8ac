"""A raw websocket client for the hostile tests: hand-made bytes, nothing read unasked.

``websockets``' own client reads, answers pings and refuses to send malformed frames;
these helpers do none of that. Server output is parsed with its sans-I/O
``ClientProtocol``, which also checks that what the server sends is well formed.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, TypedDict

from websockets.client import ClientProtocol
from websockets.frames import Close, Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

if TYPE_CHECKING:
    from typing_extensions import Unpack

KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def upgrade(
    path: str = "/ws", *, method: str = "GET", extra: bytes = b"", host: str = "127.0.0.1"
) -> bytes:
    """A websocket upgrade request (``extra``: more header lines, each ending CRLF)."""
    return (
        (
            f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n"
        ).encode()
        + extra
        + b"\r\n"
    )


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bytes | None = b"\x01\x02\x03\x04",
    length: int | None = None,
    wide: int = 0,
) -> bytes:
    """One frame, any opcode, flags and length encoding (``wide``: force the 16-bit (1)
    or 64-bit (2) form; ``length``: claim another length than the payload's);
    ``mask=None`` sends it unmasked, which a server must refuse."""
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | (rsv & 7) << 4 | (opcode & 15)])
    bit = 0x80 if mask is not None else 0
    if n < 126 and not wide:
        head += bytes([bit | n])
    elif n < 1 << 16 and wide != 2:
        head += bytes([bit | 126]) + struct.pack(">H", n)
    else:
        head += bytes([bit | 127]) + struct.pack(">Q", n)
    if mask is None:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class FrameOptions(TypedDict, total=False):
    """:func:`frame`'s keyword arguments."""

    fin: bool
    rsv: int
    mask: bytes | None
    length: int | None
    wide: int


def text(message: str | bytes, **kw: Unpack[FrameOptions]) -> bytes:
    data = message.encode() if isinstance(message, str) else message
    return frame(Opcode.TEXT.value, data, **kw)


def close(code: int = 1000, reason: str = "") -> bytes:
    return frame(Opcode.CLOSE.value, Close(code, reason).serialize())


class Peer:
    """What the server sent: the HTTP response head, then frames."""

    def __init__(self) -> None:
        self.head = b""
        self.status = 0
        self.body = b""
        self._raw = b""
        self.proto = ClientProtocol(parse_uri("ws://x/ws"), state=State.OPEN, max_size=None)
        self.frames: list[Frame] = []
        self.eof = False

    def feed(self, data: bytes) -> None:
        if not data:
            self.eof = True
            if self.status == 101:
                self.proto.receive_eof()
            return
        if self.status == 0:
            self._raw += data
            if b"\r\n\r\n" not in self._raw:
                return
            self.head, _, data = self._raw.partition(b"\r\n\r\n")
            self.status = int(self.head.split(b" ", 2)[1])
            if self.status != 101:
                self.body = data
                return
        elif self.status != 101:
            self.body += data
            return
        self.proto.receive_data(data)
        self.frames += [e for e in self.proto.events_received() if isinstance(e, Frame)]

    @property
    def close_code(self) -> int | None:
        for f in self.frames:
            if f.opcode is Opcode.CLOSE:
                return Close.parse(f.data).code
        return None

    def texts(self) -> list[str]:
        return [bytes(f.data).decode() for f in self.frames if f.opcode is Opcode.TEXT]


class RawClient:
    """One TCP connection driven by hand (asyncio)."""

    opened: list[RawClient] = []  # noqa: RUF012 (every client, for abort_all)

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.peer = Peer()
        RawClient.opened.append(self)

    @classmethod
    def abort_all(cls) -> None:
        """Drop every client: a server stopping waits for clients that never read."""
        for client in cls.opened:
            client.abort()
        cls.opened.clear()

    @classmethod
    async def open(cls, port: int, *, rcvbuf: int | None = None) -> RawClient:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # before connecting, so the window stays small
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def handshake(self, path: str = "/ws") -> None:
        await self.send(upgrade(path))
        async with asyncio.timeout(10):
            while self.peer.status == 0:
                self.peer.feed(await self.reader.read(65536))
                if self.peer.eof:
                    break
        assert self.peer.status == 101, self.peer.head

    async def read_some(self, timeout: float = 10) -> bool:
        """Read once (what is there, or wait up to ``timeout``); False at EOF."""
        try:
            data = await asyncio.wait_for(self.reader.read(1 << 20), timeout)
        except ConnectionError:
            data = b""
        self.peer.feed(data)
        return bool(data)

    async def until_closed(self, timeout: float = 10) -> Peer:
        """Read to EOF."""
        async with asyncio.timeout(timeout):
            while await self.read_some(timeout):
                pass
        return self.peer

    async def until_text(self, predicate: Callable[[str], bool], timeout: float = 10) -> str | None:
        """The first text message satisfying ``predicate``; None if the server closed."""
        seen = 0
        async with asyncio.timeout(timeout):
            while True:
                texts = self.peer.texts()
                for t in texts[seen:]:
                    if predicate(t):
                        return t
                seen = len(texts)
                if self.peer.close_code is not None or self.peer.eof:
                    return None
                await self.read_some(timeout)

    def abort(self) -> None:
        self.writer.transport.abort()


def random_mask() -> bytes:
    return os.urandom(4)
