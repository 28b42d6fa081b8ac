"""A tiny HTTP server for a process that serves no HTTP of its own (the persister):
``GET``/``HEAD`` of a few paths, one request per connection.

It reads at most :data:`MAX_REQUEST` bytes of request line and headers within
:data:`TIMEOUT` seconds, answers, and closes. Anything else is a 404, 405, 408 or 431.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from http import HTTPStatus

log = logging.getLogger(__name__)

MAX_REQUEST = 8 * 1024
TIMEOUT = 5.0

# A route gets the client's address and answers (status, body, content type).
Answer = tuple[int, bytes, str]
Route = Callable[[str], Awaitable[Answer]]
JSON = "application/json"


def response(status: int, body: bytes, content_type: str, head: bool) -> bytes:
    reason = HTTPStatus(status).phrase
    lines = [
        f"HTTP/1.1 {status} {reason}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
        "Connection: close",
        "",
        "",
    ]
    return "\r\n".join(lines).encode() + (b"" if head else body)


def _error(status: int, code: str) -> Answer:
    return status, b'{"error":"%s"}' % code.encode(), JSON


async def _answer(routes: Mapping[str, Route], reader: asyncio.StreamReader, peer: str,
                  ) -> tuple[Answer, bool]:  # fmt: skip
    try:
        async with asyncio.timeout(TIMEOUT):
            head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        return _error(431, "headers_too_large"), False
    except (TimeoutError, asyncio.IncompleteReadError):
        return _error(408, "timeout"), False
    method, _, rest = head.partition(b"\r\n")[0].decode("latin-1").partition(" ")
    path = rest.partition(" ")[0].partition("?")[0]
    route = routes.get(path)
    if route is None:
        return _error(404, "not_found"), method == "HEAD"
    if method not in ("GET", "HEAD"):
        return _error(405, "method_not_allowed"), False
    return await route(peer), method == "HEAD"


async def serve(host: str, port: int, routes: Mapping[str, Route]) -> asyncio.Server:
    """Listen on ``host:port`` and answer ``routes`` (path → :data:`Route`)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        try:
            (status, body, content_type), head = await _answer(
                routes, reader, peer[0] if peer else "?"
            )
            writer.write(response(status, body, content_type, head))
            await writer.drain()
        except Exception as exc:  # a client gone mid-answer, or a failing route
            log.debug("metrics request failed: %r", exc)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    return await asyncio.start_server(handle, host, port, limit=MAX_REQUEST,
                                      reuse_address=True)  # fmt: skip
