"""HTTP server limits: what uvicorn's httptools protocol lacks against hostile clients.

Every openplace HTTP server (``openplace serve`` facing the internet, ``openplace api``
behind nginx) runs uvicorn with the protocol class :func:`guarded_protocol` makes. It is
uvicorn's httptools protocol (the fast parser) plus:

- a cap on the request line and headers (``http_max_header_bytes``): more is a 431,
  before the parser has accumulated more than the cap (httptools and uvicorn grow the
  URL and header values by concatenation, quadratic in their size);
- a header deadline from connect, or from the first byte of a keep-alive request
  (``http_header_timeout_seconds``): a silent connection is closed, a partial head gets
  a 408;
- a body deadline from the end of the headers (``http_body_timeout_seconds``): a
  promised body that does not arrive gets a 408, and the app's ``receive`` sees a
  disconnect;
- the keep-alive idle timeout (``http_keepalive_timeout_seconds``);
- a send deadline (``http_send_timeout_seconds``): a response that a client does not
  read for that long is dropped with the connection;
- a cap on one address's open connections (``http_max_connections_per_ip``): more are
  answered 429 and closed at once. A connection from a trusted proxy
  (``trusted_proxies``) is not counted itself; its requests in progress are, under the
  forwarded client address (as uvicorn's proxy-headers middleware names it), and its
  requests without ``X-Forwarded-For`` are its own and not counted.

The protocol also sets an HTTP request's client (and scheme) from a trusted proxy's
``X-Forwarded-For`` (``X-Forwarded-Proto``), as uvicorn's proxy-headers middleware
would: it reads those headers anyway, for the counts, and doing it once here keeps a
middleware and a second parse of the addresses off every request. Websocket handshakes
are handed to another protocol before their scope exists, so :class:`ForwardedWebsockets`
does the same for them.

Every refusal is the API's JSON error. The per-address counts are per process.

While the server drains before it stops (``observe/health.py: Drain``), every
answer closes its connection, so a proxy stops reusing connections to it.

The head, body and linger deadlines are checked by one timer per server
(:class:`Deadlines`), not a timer per request: setting a deadline is storing a number,
which keeps this layer cheap on the placement path.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.config import Config
from uvicorn.middleware.proxy_headers import (
    ProxyHeadersMiddleware,
    _parse_host_port,
    _TrustedHosts,
)
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from openplace.api.errors import Refusal, render_error
from openplace.config import Settings
from openplace.observe.health import Drain

log = logging.getLogger(__name__)

TOO_MANY_CONNECTIONS = Refusal(
    429, "too_many_connections", "too many open connections from this address",
    (("Retry-After", "1"),),
)  # fmt: skip
HEADERS_TOO_LARGE = Refusal(431, "headers_too_large", "the request line and headers are too large")
HEADERS_TIMEOUT = Refusal(408, "request_timeout", "the request headers took too long")
BODY_TIMEOUT = Refusal(408, "request_timeout", "the request body took too long")
BAD_HTTP = Refusal(400, "bad_request", "invalid HTTP request")
# After an answer that closes the connection, input is read and dropped for this long
# (or this much) before the connection is reset.
LINGER_SECONDS = 1.0
LINGER_BYTES = 1024 * 1024
_BUSY_BODY, _BUSY_HEADERS = render_error(
    "too_many_connections", "too many requests in progress from this address",
    {"Retry-After": "1"},
)  # fmt: skip


async def _too_many_requests(scope: Any, receive: Any, send: Any) -> None:
    """The answer to a forwarded client over its cap (the proxy's connection stays)."""
    await send({"type": "http.response.start", "status": 429, "headers": _BUSY_HEADERS})
    await send({"type": "http.response.body", "body": _BUSY_BODY})


class AddressSlots:
    """Counts of what each address holds open, each at most ``limit``."""

    __slots__ = ("counts", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.counts: dict[str, int] = {}

    def acquire(self, address: str) -> bool:
        held = self.counts.get(address, 0)
        if held >= self.limit:
            return False
        self.counts[address] = held + 1
        return True

    def release(self, address: str) -> None:
        held = self.counts.get(address, 0) - 1
        if held > 0:
            self.counts[address] = held
        else:
            self.counts.pop(address, None)


class Deadlines:
    """One server's connections that may have a deadline, checked every ``tick`` seconds
    by a single timer (running only while there are connections). A deadline fires up
    to ``tick`` late."""

    __slots__ = ("_handle", "conns", "tick")

    def __init__(self, tick: float) -> None:
        self.tick = tick
        self.conns: set[GuardedProtocol] = set()
        self._handle: asyncio.TimerHandle | None = None

    def add(self, conn: GuardedProtocol, loop: asyncio.AbstractEventLoop) -> None:
        self.conns.add(conn)
        if self._handle is None:
            self._handle = loop.call_later(self.tick, self._sweep, loop)

    def discard(self, conn: GuardedProtocol) -> None:
        self.conns.discard(conn)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        for conn in [c for c in self.conns if 0.0 < c.deadline_at <= now]:
            conn.deadline_passed()
        self._handle = loop.call_later(self.tick, self._sweep, loop) if self.conns else None


@dataclass(frozen=True, slots=True)
class Limits:
    max_header_bytes: int
    header_timeout: float
    body_timeout: float
    keepalive_timeout: float
    send_timeout: float
    max_connections_per_ip: int

    @classmethod
    def from_settings(cls, s: Settings) -> Limits:
        return cls(
            s.http_max_header_bytes, s.http_header_timeout_seconds, s.http_body_timeout_seconds,
            s.http_keepalive_timeout_seconds, s.http_send_timeout_seconds,
            s.http_max_connections_per_ip,
        )  # fmt: skip

    @property
    def tick(self) -> float:
        """How often deadlines are checked: a tenth of the shortest, within 10..500 ms."""
        shortest = min(self.header_timeout, self.body_timeout, self.keepalive_timeout)
        return min(0.5, max(0.01, shortest / 10))


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits above. Use :func:`guarded_protocol`,
    which gives each server its own subclass with its own ``limits`` and ``slots``."""

    limits: Limits
    slots: AddressSlots
    trusted: _TrustedHosts
    deadlines: Deadlines
    drain: Drain

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._address: str | None = None  # the connection's slot (untrusted peers)
        self._request_address: str | None = None  # the request's slot (trusted peers)
        self._trusted_peer = False
        self._closing = False  # answered and half-closed: input is discarded
        self._discarded = 0
        self._in_head = True  # reading a request line and headers
        self._head_bytes = 0
        self._body_pending = False
        self.deadline_at = 0.0  # loop time of the head, body or linger deadline; 0: none
        self._on_deadline: Callable[[], None] = self._head_timed_out
        self._idle = False  # the deadline is the keep-alive timeout between requests
        self._send_deadline: asyncio.TimerHandle | None = None

    # -- connection --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.deadlines.add(self, self.loop)
        peer = self.client[0] if self.client else None
        if peer is not None:
            self._trusted_peer = peer in self.trusted
            if not self._trusted_peer:
                if not self.slots.acquire(peer):
                    self._refuse()
                    return
                self._address = peer
        self._arm(self.limits.header_timeout, self._head_timed_out)

    def _refuse(self) -> None:
        """Over the address's cap: answer 429 at once, then close."""
        self._close_with(TOO_MANY_CONNECTIONS.http())

    def _close_with(self, response: bytes) -> None:
        """Answer ``response`` (unless another answer is being written) and close. The
        connection half-closes and reads on, discarding, for a moment (at most
        :data:`LINGER_SECONDS` and :data:`LINGER_BYTES`): a client that is still sending
        then reads the answer instead of a reset."""
        if self._ended():
            return
        self._disarm()
        transport = self.transport
        if self._busy() or not transport.can_write_eof():
            if not self._busy():
                transport.write(response)
            transport.close()
            return
        self._closing = True
        transport.write(response)
        transport.write_eof()
        self._arm(LINGER_SECONDS, transport.abort)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.deadlines.discard(self)
        self._disarm_send()
        self._release()
        super().connection_lost(exc)

    def _release(self) -> None:
        if self._address is not None:
            self.slots.release(self._address)
            self._address = None
        self._release_request()

    def _release_request(self) -> None:
        if self._request_address is not None:
            self.slots.release(self._request_address)
            self._request_address = None

    def eof_received(self) -> None:
        if self._closing:
            self.transport.close()

    def handle_websocket_upgrade(self) -> None:
        # The websocket protocol takes the connection over, with its own per-address cap.
        self._disarm()
        self.deadlines.discard(self)
        self._release()
        super().handle_websocket_upgrade()

    # -- deadlines ---------------------------------------------------------------------

    def _arm(self, delay: float, callback: Callable[[], None]) -> None:
        self.deadline_at = self.loop.time() + delay
        self._on_deadline = callback
        self._idle = False

    def _arm_idle(self) -> None:
        """Between requests: close after the keep-alive timeout unless a request begins."""
        self._arm(self.limits.keepalive_timeout, self._idle_timed_out)
        self._idle = True

    def _idle_timed_out(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()

    def _disarm(self) -> None:
        self.deadline_at = 0.0

    def deadline_passed(self) -> None:
        """Called by :class:`Deadlines` once the armed deadline has passed."""
        self.deadline_at = 0.0
        self._on_deadline()

    def _disarm_send(self) -> None:
        if self._send_deadline is not None:
            self._send_deadline.cancel()
            self._send_deadline = None

    def _ended(self) -> bool:
        return self._closing or self.transport.is_closing()

    def _busy(self) -> bool:
        """A request is being answered (a pipelined head must not answer in between)."""
        return bool(self.pipeline) or (self.cycle is not None and not self.cycle.response_complete)

    def _head_timed_out(self) -> None:
        if self._busy():  # reading is paused behind a request in progress
            self._arm(self.limits.header_timeout, self._head_timed_out)
        elif self._head_bytes == 0:
            self.transport.close()  # idle: nothing to answer
        else:
            self._close_with(HEADERS_TIMEOUT.http())

    def _body_timed_out(self) -> None:
        cycle = self.cycle
        if cycle is not None and not cycle.response_started:
            # The app gets a disconnect from receive() and its answer goes nowhere.
            cycle.disconnected = True
            cycle.message_event.set()
            self.transport.write(BODY_TIMEOUT.http())
        self.transport.close()

    def _send_timed_out(self) -> None:
        self._send_deadline = None
        self.transport.abort()  # the client has not read for send_timeout: drop its backlog

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._send_deadline is None:
            self._send_deadline = self.loop.call_later(
                self.limits.send_timeout, self._send_timed_out
            )

    def resume_writing(self) -> None:
        super().resume_writing()
        self._disarm_send()

    # -- parsing -----------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._closing:
            self._discarded += len(data)
            if self._discarded > LINGER_BYTES:
                self.transport.abort()
            return
        limit = self.limits.max_header_bytes
        while self._in_head:
            room = limit - self._head_bytes
            if room <= 0:
                self._close_with(HEADERS_TOO_LARGE.http())
                return
            chunk = data if len(data) <= room else data[:room]
            self._head_bytes += len(chunk)
            super().data_received(chunk)
            if self._ended() or self.transport.get_protocol() is not self:
                return  # refused by the parser, or upgraded to a websocket
            if len(chunk) == len(data):
                data = b""
                break
            data = data[len(chunk) :]
        if data:
            super().data_received(data)
        if self._body_pending and self.deadline_at == 0.0 and not self._ended():
            self._arm(self.limits.body_timeout, self._body_timed_out)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.deadline_at == 0.0 or self._idle:  # a keep-alive request: its head starts now
            self._arm(self.limits.header_timeout, self._head_timed_out)

    def on_headers_complete(self) -> None:
        self._disarm()
        self._in_head = False
        self._body_pending = True
        if self._trusted_peer:
            self._release_request()
            address = self._forward()
            if address is not None and not self.slots.acquire(address):
                app, self.app = self.app, _too_many_requests
                try:
                    super().on_headers_complete()
                finally:
                    self.app = app
                return
            self._request_address = address
        super().on_headers_complete()
        if self.drain.since is not None and self.cycle is not None:
            self.cycle.keep_alive = False  # draining: "Connection: close" on the answer

    def _forward(self) -> str | None:
        """Set the request's client and scheme from a trusted proxy's ``X-Forwarded-*``
        headers, as uvicorn's proxy-headers middleware does; the client address, or
        ``None`` for a request of the proxy's own (a health check, a local tool)."""
        values: list[bytes] = []
        proto: bytes | None = None
        for name, value in self.headers:
            if name == b"x-forwarded-for":
                values.append(value)
            elif name == b"x-forwarded-proto":
                proto = value
        if proto is not None:
            scheme = proto.decode("latin-1").strip()
            if scheme in _SCHEMES:
                self.scope["scheme"] = scheme
        if not values:
            return None
        if len(values) == 1 and b"," not in values[0]:
            # One hop: the client whether or not it is trusted itself (uvicorn's rule).
            host, port = _parse_host_port(values[0].decode("latin-1").strip())
        else:
            forwarded = b", ".join(values).decode("latin-1")
            host, port = self.trusted.get_trusted_client_address(forwarded)
        if not host:
            return None
        self.scope["client"] = (host, port)
        return host

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()
        self._body_pending = False
        self._in_head = True
        self._head_bytes = 0
        cycle = self.cycle
        if (
            cycle is not None
            and cycle.response_complete
            and not self.pipeline
            and not self._ended()
        ):  # answered before its body ended: idle from now on
            self._arm_idle()

    def on_response_complete(self) -> None:
        # uvicorn's, except that the keep-alive timeout is a deadline of ours (no timer
        # handle per request).
        self._release_request()
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        elif not self._body_pending:  # else the body deadline runs; idle after it ends
            self._arm_idle()

    def send_400_response(self, msg: str) -> None:
        self._close_with(BAD_HTTP.http())


_SCHEMES = frozenset(("http", "https", "ws", "wss"))


class ForwardedWebsockets:
    """uvicorn's proxy-headers middleware for websocket handshakes only: an HTTP
    request's client is set by :class:`GuardedProtocol`, from the same headers."""

    def __init__(self, app: ASGIApp, trusted_hosts: str) -> None:
        self.app = app
        self._forwarded = cast(ASGIApp, ProxyHeadersMiddleware(cast(Any, app), trusted_hosts))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._forwarded(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def guarded_protocol(settings: Settings, drain: Drain | None = None) -> type[GuardedProtocol]:
    """A protocol class for one server: its own limits, per-address counts and drain."""
    return type(
        "GuardedProtocol",
        (GuardedProtocol,),
        {
            "limits": Limits.from_settings(settings),
            "slots": AddressSlots(settings.http_max_connections_per_ip),
            "trusted": _TrustedHosts(settings.trusted_proxies),
            "deadlines": Deadlines(Limits.from_settings(settings).tick),
            "drain": drain or Drain(),
        },
    )


def raise_fd_limit() -> int:
    """Raise this process's open-file soft limit to the hard limit; returns the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit to %d: %s", hard, exc)
    return soft
