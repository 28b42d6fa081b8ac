"""What a websocket client may ask, and the answers: shared by both servers of ``/ws``
(the ASGI endpoint in one-process mode, the lean server of realtime processes)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import orjson

from openplace.core.wire import control


@dataclass(frozen=True, slots=True)
class Refusal(Exception):
    """An upgrade refused with an HTTP status and a JSON error."""

    status: int
    code: str
    message: str

    def body(self) -> bytes:
        return orjson.dumps({"error": self.code, "message": self.message})


def parse_query(params: Mapping[str, str]) -> tuple[int | None, str | None]:
    """``(since, board)`` of a ``/ws`` query, or :class:`Refusal`."""
    since_raw = params.get("since")
    if since_raw is not None and not (since_raw.isascii() and since_raw.isdigit()):
        raise Refusal(400, "bad_since", "since must be a non-negative integer")
    board = params.get("board")
    if board is not None and not (0 < len(board) <= 64 and board.isprintable()):
        raise Refusal(400, "bad_board", "board must be the X-Board-Id of a board fetch")
    return (int(since_raw) if since_raw is not None else None), board


def client_address(peer: str, forwarded_for: str | None, trusted: frozenset[str]) -> str:
    """The client's address: the peer's, or, when the peer is a trusted proxy, the last
    address it added to ``X-Forwarded-For`` (the one it saw)."""
    if forwarded_for and peer in trusted:
        last = forwarded_for.rsplit(",", 1)[-1].strip()
        if last:
            return last
    return peer


TOO_MANY = Refusal(429, "too_many_connections", "too many connections from this address")


def answer_text(text: str) -> str:
    """The reply to a client's text message: ``ping`` gets ``pong``, else an error."""
    try:
        body = orjson.loads(text)
    except orjson.JSONDecodeError:
        body = None
    if isinstance(body, dict) and body.get("type") == "ping":
        return control("pong", id=body.get("id"))
    return control("error", error="bad_message", message='expected {"type": "ping"}')


BINARY_REFUSED = control("error", error="bad_message", message="binary frames not accepted")
