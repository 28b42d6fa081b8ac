"""Typed errors for the server's JSON refusals (``{"error": code, "message": ...}``).

Every refusal is a :class:`CanvasError`; the common ones have a subclass, so a bot
can ``except Cooldown as e: await asyncio.sleep(e.retry_after)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from openplace.client.models import parse_time


class CanvasError(Exception):
    """An answer that is not a success: its HTTP ``status``, the ``code`` of its JSON
    body (``"http_<status>"`` when the body is not the server's JSON) and ``message``."""

    def __init__(
        self, status: int, code: str, message: str, body: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.body: Mapping[str, Any] = body or {}


class _RetryLater(CanvasError):
    """A refusal that says when to try again: ``retry_after`` seconds (0 if unsaid)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        body: Mapping[str, Any] | None = None,
        retry_after: float = 0.0,
    ) -> None:
        super().__init__(status, code, message, body)
        self.retry_after = retry_after


class Cooldown(_RetryLater):
    """429 ``cooldown``: this user (or address) placed less than the cooldown ago.

    ``retry_after`` is in seconds (the body's, to the millisecond); ``next_at`` is when.
    """

    @property
    def next_at(self) -> datetime | None:
        return parse_time(self.body.get("next_at"))


class RateLimited(_RetryLater):
    """429 ``rate_limited`` (too many new sessions) or ``too_many_connections``."""


class Unavailable(_RetryLater):
    """503 ``unavailable``: the store could not be read or written; nothing changed."""


class Unconfirmed(Unavailable):
    """503 ``unconfirmed`` (distributed mode): the placement was accepted but not yet
    confirmed durable. It may still appear; retrying it gets ``Cooldown``."""


class Banned(CanvasError):
    """403 ``banned``: the user or its address is banned, with ``reason`` and
    ``expires_at`` (``None``: until lifted)."""

    @property
    def reason(self) -> str | None:
        reason = self.body.get("reason")
        return reason if isinstance(reason, str) else None

    @property
    def expires_at(self) -> datetime | None:
        return parse_time(self.body.get("expires_at"))


class Protected(CanvasError):
    """403 ``protected``: the pixel is inside a protected area (see ``policy()``)."""


class Frozen(CanvasError):
    """403 ``frozen``: moderators froze the canvas; every placement is refused."""


class Forbidden(CanvasError):
    """403 ``forbidden``: a user's token on a moderators' endpoint."""


class Unauthorized(CanvasError):
    """401 ``unauthorized``: no token, or a bad or forged one."""


class InvalidRequest(CanvasError):
    """A 4xx for a request the server will never accept as sent: 400 (``bad_request``,
    ``bad_coordinates``, ``bad_color``, ...), 413, 431, 405."""


class NotFound(InvalidRequest):
    """404 ``not_found``, e.g. a seq beyond the history."""


_BY_CODE: dict[str, type[CanvasError]] = {
    "cooldown": Cooldown,
    "rate_limited": RateLimited,
    "too_many_connections": RateLimited,
    "unavailable": Unavailable,
    "unconfirmed": Unconfirmed,
    "banned": Banned,
    "protected": Protected,
    "frozen": Frozen,
    "forbidden": Forbidden,
    "unauthorized": Unauthorized,
    "not_found": NotFound,
}


def _seconds(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def error_from(status: int, body: object, headers: Mapping[str, str]) -> CanvasError:
    """The typed error of a refusal: its JSON ``body`` (any other body gives the base
    class or a subclass chosen by ``status``) and its headers (``Retry-After``)."""
    fields: Mapping[str, Any] = body if isinstance(body, dict) else {}
    code = fields.get("error")
    message = fields.get("message")
    if not isinstance(code, str):
        code = f"http_{status}"
    if not isinstance(message, str):
        message = f"HTTP {status}"
    kind = _BY_CODE.get(code)
    if kind is None:
        if status == 401:
            kind = Unauthorized
        elif status == 503:
            kind = Unavailable
        elif status == 429:
            kind = RateLimited
        elif 400 <= status < 500 and status != 408:
            kind = InvalidRequest
        else:
            kind = CanvasError
    if issubclass(kind, _RetryLater):
        after = _seconds(fields.get("retry_after"))
        if after is None:
            after = _seconds(headers.get("retry-after"))
        return kind(status, code, message, fields, after if after is not None else 0.0)
    return kind(status, code, message, fields)
