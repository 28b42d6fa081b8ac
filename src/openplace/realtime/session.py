"""What a websocket client may ask, and the answers: shared by both servers of ``/ws``
(the ASGI endpoint in one-process mode, the lean server of realtime processes).

Everything here is total: any input gets an answer or a :class:`Refusal`, never
another exception, so hostile input cannot produce a traceback or a 500.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

import orjson
from uvicorn.middleware.proxy_headers import _TrustedHosts
from websockets.exceptions import SecurityError

from openplace.api.errors import Refusal
from openplace.core.wire import control

MAX_SINCE_DIGITS = 19  # a seq is a signed 64-bit integer (PostgreSQL bigint)
MAX_SINCE = 2**63 - 1
MAX_BOARD_CHARS = 64
MAX_PING_ID_CHARS = 64
MAX_QUERY_FIELDS = 16


BAD_SINCE = Refusal(400, "bad_since", f"since must be an integer 0..{MAX_SINCE}, given once")
BAD_BOARD = Refusal(400, "bad_board", "board must be the X-Board-Id of a board fetch, given once")
BAD_QUERY = Refusal(400, "bad_query", "malformed query string")
TOO_MANY = Refusal(429, "too_many_connections", "too many connections from this address")
TOO_LARGE = Refusal(431, "headers_too_large", "the request line and headers are too large")
TOO_SLOW = Refusal(408, "request_timeout", "the upgrade request took too long")
BAD_REQUEST = Refusal(400, "bad_request", "malformed HTTP request")


def handshake_refusal(exc: BaseException | None) -> Refusal:
    """The answer to an upgrade request that websockets could not parse."""
    return TOO_LARGE if isinstance(exc, SecurityError) else BAD_REQUEST


def parse_query(query: str) -> tuple[int | None, str | None]:
    """``(since, board)`` of a raw ``/ws`` query string, or :class:`Refusal`.

    ``since`` is 1..19 ASCII digits (no sign, no ``_``, no other digit systems) up to
    2**63 - 1; ``board`` is 1..64 printable characters. Each at most once; other
    parameters are ignored.
    """
    try:
        pairs = parse_qsl(query, keep_blank_values=True, errors="strict",
                          max_num_fields=MAX_QUERY_FIELDS)  # fmt: skip
    except ValueError:  # too many fields, or percent-escapes that are not UTF-8
        raise BAD_QUERY from None
    since: int | None = None
    board: str | None = None
    seen: set[str] = set()
    for key, value in pairs:
        if key in seen and key in ("since", "board"):
            raise BAD_SINCE if key == "since" else BAD_BOARD
        seen.add(key)
        if key == "since":
            # isascii() first: str.isdigit() also accepts e.g. Arabic-Indic digits.
            ok = 0 < len(value) <= MAX_SINCE_DIGITS and value.isascii() and value.isdigit()
            if not ok or int(value) > MAX_SINCE:
                raise BAD_SINCE
            since = int(value)
        elif key == "board":
            if not (0 < len(value) <= MAX_BOARD_CHARS and value.isprintable()):
                raise BAD_BOARD
            board = value
    return since, board


def trusted_hosts(spec: str) -> _TrustedHosts:
    """The proxies whose ``X-Forwarded-For`` is believed, from ``OPENPLACE_TRUSTED_PROXIES``:
    addresses and networks (CIDR), read as uvicorn reads them for the API."""
    return _TrustedHosts(spec)


def client_address(peer: str, forwarded_for: str | None, trusted: _TrustedHosts) -> str:
    """The client's address: the peer's, or, when the peer is a trusted proxy, the
    nearest address in ``X-Forwarded-For`` that is not a trusted proxy's."""
    if forwarded_for and peer in trusted:
        host, _ = trusted.get_trusted_client_address(forwarded_for)
        if host:
            return host[:64]
    return peer


PING_EXPECTED = (
    'expected {"type": "ping", "id": null, a boolean, a number '
    f"or a string of at most {MAX_PING_ID_CHARS} characters}}"
)
BAD_MESSAGE = control("error", error="bad_message", message=PING_EXPECTED)
BINARY_REFUSED = control("error", error="bad_message", message="binary frames not accepted")


def _scalar_id(value: object) -> bool:
    # orjson only yields finite floats and integers within 64 bits, which it can
    # write back; containers (nested up to its depth limit) are what it cannot.
    if value is None or isinstance(value, bool | int | float):
        return True
    return isinstance(value, str) and len(value) <= MAX_PING_ID_CHARS


def answer_text(text: str) -> str:
    """The reply to a client's text message: ``ping`` gets ``pong``, else an error."""
    try:
        body = orjson.loads(text)
    except ValueError:  # orjson.JSONDecodeError, including nesting over its depth limit
        return BAD_MESSAGE
    if not (isinstance(body, dict) and body.get("type") == "ping"):
        return BAD_MESSAGE
    ping_id = body.get("id")
    if not _scalar_id(ping_id):
        return BAD_MESSAGE
    return control("pong", id=ping_id)
