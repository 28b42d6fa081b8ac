"""The ``/ws`` websocket endpoint: thin I/O around :class:`~openplace.realtime.hub.Hub`.

It needs the server to expose each connection's transport (the scope extension
:data:`~openplace.realtime.transport.EXTENSION`), as ``openplace serve``'s uvicorn with
:class:`~openplace.realtime.transport.WSProtocol` does: the hub writes frames straight
to it. There is no other path: under a server without it, every upgrade is refused
(403) and an error naming the cause is logged.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from openplace.api.errors import Refusal, error_response
from openplace.realtime.hub import Hub
from openplace.realtime.session import (
    BINARY_REFUSED,
    TOO_MANY,
    answer_text,
    parse_query,
)
from openplace.realtime.transport import EXTENSION, TransportSubscriber
from openplace.state import state_of

log = logging.getLogger(__name__)

NO_TRANSPORT = (
    f"/ws refused: the server does not provide the {EXTENSION!r} scope extension; run "
    "it with openplace.realtime.transport.WSProtocol (as `openplace serve` does)"
)


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
    ext = ws.scope.get("extensions", {}).get(EXTENSION)
    if ext is None:  # a server this endpoint cannot feed: say so, serve nobody
        log.error(NO_TRANSPORT)
        await ws.close(code=1011, reason="server misconfigured")
        return
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
        await _serve(ws, hub, ext, since, board)
    finally:
        hub.release(ip)


async def _serve(
    ws: WebSocket, hub: Hub, ext: dict[str, Any], since: int | None, board: str | None
) -> None:
    """The hub writes frames straight to the transport; closing a slow client closes
    the transport, which ends :func:`_receive`. One task per client."""
    sub = TransportSubscriber(ext["transport"], hub.send_buffer)
    ext["bind"](sub)  # pongs count against the same budget
    try:
        await hub.attach(sub, since, board)
        await _receive(ws, sub)
    finally:
        hub.detach(sub)


async def _receive(ws: WebSocket, sub: TransportSubscriber) -> None:
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
