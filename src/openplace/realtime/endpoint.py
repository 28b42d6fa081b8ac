"""The ``/ws`` websocket endpoint: thin I/O around :class:`~openplace.realtime.hub.Hub`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from openplace.api.errors import error_response
from openplace.realtime.hub import CLOSE_TOO_SLOW, Hub, Subscriber
from openplace.realtime.session import (
    BINARY_REFUSED,
    TOO_MANY,
    Refusal,
    answer_text,
    parse_query,
)
from openplace.realtime.transport import EXTENSION, TransportSubscriber
from openplace.state import state_of

log = logging.getLogger(__name__)


def client_ip(ws: WebSocket) -> str:
    return ws.client.host if ws.client else "?"


async def _deny(ws: WebSocket, refusal: Refusal) -> None:
    """Refuse the upgrade with a JSON HTTP error (where the server supports it)."""
    response = error_response(refusal.status, refusal.code, refusal.message)
    if "websocket.http.response" in ws.scope.get("extensions", {}):
        await ws.send_denial_response(response)
    else:
        await ws.close(code=1008, reason=refusal.message)


async def websocket_endpoint(ws: WebSocket) -> None:
    hub = state_of(ws).hub
    try:
        since, board = parse_query(ws.scope.get("query_string", b"").decode("latin-1"))
    except Refusal as refusal:
        await _deny(ws, refusal)
        return
    ip = client_ip(ws)
    if not hub.admit(ip):
        await _deny(ws, TOO_MANY)
        return
    try:
        await ws.accept()
        await _serve(ws, hub, since, board)
    finally:
        hub.release(ip)


async def _send(ws: WebSocket, message: bytes | str) -> None:
    if isinstance(message, bytes):
        await ws.send_bytes(message)
    else:
        await ws.send_text(message)


async def _serve(ws: WebSocket, hub: Hub, since: int | None, board: str | None) -> None:
    ext = ws.scope.get("extensions", {}).get(EXTENSION)
    if ext is not None:
        # The fast path: the hub writes frames straight to the transport, and closing a
        # slow client closes the transport, which ends _receive. One task per client.
        fast = TransportSubscriber(ext["transport"], hub.send_buffer)
        ext["bind"](fast)  # pongs count against the same budget
        try:
            await hub.attach(fast, since, board)
            await _receive(ws, fast)
        finally:
            hub.detach(fast)
        return
    # Any other ASGI server: a queue and a sending task per client.
    sub = Subscriber(lambda m: _send(ws, m), hub.send_buffer)
    tasks = [asyncio.create_task(t) for t in (sub.run(), _receive(ws, sub), sub.done.wait())]
    try:
        await hub.attach(sub, since, board)
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        hub.detach(sub)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
    if sub.closed:
        code = CLOSE_TOO_SLOW if sub.close_reason == "too slow" else 1001
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(code, sub.close_reason), 1)


async def _receive(ws: WebSocket, sub: Any) -> None:
    """Answer client messages until the connection ends."""
    while True:
        try:
            message = await ws.receive()
        except (WebSocketDisconnect, RuntimeError):  # RuntimeError: closed under us
            return
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        sub.offer(BINARY_REFUSED if text is None else answer_text(text))
