"""``/api/admin/``: what moderators do, behind a moderator token.

Every admin request proves a moderator: a valid moderator token (``openplace admin
token``), not expired, and not revoked, checked against the store each time, so a
revocation holds at once in every process. Anyone else gets 401 (no token, a bad or
expired one, a revoked one) or 403 (a user's token), as JSON. Every action is recorded
in the audit log.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from openplace.api.errors import STORE_OUTAGES, APIError, read_store
from openplace.api.json import JSONResponse
from openplace.api.params import MAX_SEQ, query_number
from openplace.api.placing import (
    authorization_of,
    bearer_token,
    integer,
    iso,
    parse_json,
    too_large,
)
from openplace.auth.moderators import Moderator
from openplace.auth.tokens import InvalidToken
from openplace.core.audit import AuditEntry
from openplace.core.board import InvalidPixel, check_color
from openplace.core.placement import StaleRun
from openplace.core.policy import Ban, InvalidNetwork, InvalidRect, Rect, parse_network
from openplace.core.timeline import parse_duration, parse_time
from openplace.moderation.actions import Moderators, TooManyPixels
from openplace.state import state_of

AUDIT_PAGE_MAX = 500
MAX_ADMIN_BODY = 64 * 1024  # a rollback may name many users
MAX_REASON = 200
MAX_USER_ID = 64
MAX_BAN_SECONDS = 100 * 365 * 86_400  # a hundred years: longer is "never" (no expires_in)
MAX_ID = 2**62
_NO_TOKEN = "send 'Authorization: Bearer <moderator token>' (openplace admin token)"


def _unauthorized(message: str) -> APIError:
    return APIError(401, "unauthorized", message,
                    headers={"WWW-Authenticate": 'Bearer realm="admin"'})  # fmt: skip


async def moderator_of(request: Request) -> Moderator:
    """The moderator making this request, or a 401/403."""
    state = state_of(request)
    token = bearer_token(authorization_of(request.headers.raw))
    if not token:
        raise _unauthorized(_NO_TOKEN)
    try:
        moderator = state.moderators.verify(token, time.time())
    except InvalidToken as exc:
        try:
            state.signer.verify(token)
        except InvalidToken:
            raise _unauthorized(str(exc)) from exc
        raise APIError(403, "forbidden", "a user's token cannot moderate") from exc
    revoked = await read_store(request, state.moderation.revoked_at(moderator.name))
    if revoked is not None and moderator.issued_at <= revoked:
        raise _unauthorized("this moderator token was revoked")
    return moderator


def entry_json(entry: AuditEntry) -> dict[str, object]:
    return {
        "id": entry.id,
        "at": iso(entry.ts),
        "actor": entry.actor,
        "action": entry.action,
        "args": entry.args,
        "effect": entry.effect,
    }


async def whoami(request: Request) -> Response:
    """``GET /api/admin/me``: the moderator the token names."""
    moderator = await moderator_of(request)
    return JSONResponse(
        {
            "name": moderator.name,
            "issued_at": iso(moderator.issued_at),
            "expires_at": iso(moderator.expires_at),
        },
        headers={"Cache-Control": "no-store"},
    )


def _page_number(request: Request, name: str, top: int) -> int | None:
    number = query_number(request, name, maximum=top)
    if number == 0:
        raise APIError(400, "bad_request", f"{name} must be within 1..{top}")
    return number


async def audit(request: Request) -> Response:
    """``GET /api/admin/audit?before=&limit=``: admin actions, newest first, paged by
    ``next_before``."""
    await moderator_of(request)
    before = _page_number(request, "before", MAX_SEQ)
    limit = _page_number(request, "limit", AUDIT_PAGE_MAX) or 50
    entries = await read_store(request, state_of(request).moderation.audit(before, limit))
    return JSONResponse(
        {
            "entries": [entry_json(e) for e in entries],
            "next_before": entries[-1].id if len(entries) == limit else None,
        },
        headers={"Cache-Control": "no-store"},
    )


# -- actions -------------------------------------------------------------------------


def _bad(message: str) -> APIError:
    return APIError(400, "bad_request", message)


async def _body(request: Request, fields: frozenset[str]) -> dict[str, Any]:
    """The request's JSON object, with no fields but ``fields``."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_ADMIN_BODY:
            raise too_large(MAX_ADMIN_BODY)
    data = parse_json(body or b"{}")
    if not isinstance(data, dict):
        raise _bad("expected a JSON object")
    if unknown := data.keys() - fields:
        raise _bad(f"unknown fields: {', '.join(sorted(unknown))[:200]}")
    return data


def _text(data: dict[str, Any], name: str, limit: int) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not 1 <= len(value) <= limit:
        raise _bad(f"'{name}' must be a string of 1 to {limit} characters")
    return value


def _rect(request: Request, value: object) -> Rect:
    if not isinstance(value, dict) or value.keys() != {"x", "y", "w", "h"}:
        raise APIError(400, "bad_rect", 'a rectangle is {"x", "y", "w", "h"}')
    rect = Rect(*(integer(value[k], f"rect.{k}") for k in ("x", "y", "w", "h")))
    try:
        return rect.check(state_of(request).store.geometry)
    except InvalidRect as exc:
        raise APIError(400, "bad_rect", str(exc)) from exc


def _network(value: object) -> str:
    if not isinstance(value, str):
        raise _bad("'network' must be an address or a CIDR network, as a string")
    try:
        return str(parse_network(value))
    except InvalidNetwork as exc:
        raise _bad(str(exc)) from exc


def _subject(data: dict[str, Any]) -> tuple[str, str]:
    """``("user", id)`` or ``("network", cidr)``: exactly one of them."""
    if ("user" in data) == ("network" in data):
        raise _bad("give either 'user' or 'network'")
    if "user" in data:
        return "user", _text(data, "user", MAX_USER_ID)
    return "network", _network(data["network"])


def _since(value: object, now: float) -> float:
    if not isinstance(value, str):
        raise _bad("'since' must be an ISO 8601 time or a duration like 1h")
    try:
        return now - parse_duration(value)
    except ValueError:
        pass
    try:
        return parse_time(value)
    except ValueError as exc:
        raise _bad("'since' must be an ISO 8601 time or a duration like 1h") from exc


def _moderators(request: Request) -> Moderators:
    state = state_of(request)
    return Moderators(state.store, state.timeline.archive, state.moderation,
                      state.settings.admin_max_pixels)  # fmt: skip


def _answer(effect: dict[str, Any]) -> Response:
    return JSONResponse(effect, headers={"Cache-Control": "no-store"})


async def ban(request: Request) -> Response:
    """``POST /api/admin/ban``: a user or a network may no longer place (nor, a
    network, make sessions)."""
    moderator = await moderator_of(request)
    data = await _body(request, frozenset({"user", "network", "reason", "expires_in"}))
    kind, subject = _subject(data)
    reason = _text(data, "reason", MAX_REASON)
    now = time.time()
    expires_at = None
    if data.get("expires_in") is not None:
        try:
            seconds = parse_duration(str(data["expires_in"]))
        except ValueError as exc:
            raise _bad(f"'expires_in': {exc}") from exc
        if seconds > MAX_BAN_SECONDS:
            raise _bad("'expires_in' is at most 36500d; leave it out for a ban without end")
        expires_at = now + seconds
    record = Ban(kind, subject, reason, moderator.name, now, expires_at)
    effect = await _act(_moderators(request).ban(moderator.name, record))
    return _answer(effect | {"ban": ban_json(record)})


async def unban(request: Request) -> Response:
    """``POST /api/admin/unban``: lift a user's or a network's ban."""
    moderator = await moderator_of(request)
    kind, subject = _subject(await _body(request, frozenset({"user", "network"})))
    return _answer(await _act(_moderators(request).unban(moderator.name, kind, subject)))


async def bans(request: Request) -> Response:
    """``GET /api/admin/bans``: the bans in force."""
    await moderator_of(request)
    policy = await read_store(request, state_of(request).moderation.policy())
    return _answer({"bans": [ban_json(b) for b in policy.active_bans(time.time())]})


async def rollback(request: Request) -> Response:
    """``POST /api/admin/rollback``: undo users' (or a network's) placements since a time."""
    moderator = await moderator_of(request)
    data = await _body(request, frozenset({"users", "network", "since", "rect"}))
    users = data.get("users", [])
    if not isinstance(users, list) or not all(
        isinstance(u, str) and 1 <= len(u) <= MAX_USER_ID for u in users
    ):
        raise _bad(f"'users' must be a list of user ids (1 to {MAX_USER_ID} characters)")
    network = _network(data["network"]) if data.get("network") is not None else None
    if not users and network is None:
        raise _bad("give 'users', 'network' or both")
    since = _since(data.get("since"), time.time())
    rect = _rect(request, data["rect"]) if data.get("rect") is not None else None
    return _answer(await _act(_moderators(request).rollback(
        moderator.name, users, network, since, rect)))  # fmt: skip


async def fill(request: Request) -> Response:
    """``POST /api/admin/fill``: one colour over a rectangle (no colour: 0, a clear)."""
    moderator = await moderator_of(request)
    data = await _body(request, frozenset({"rect", "color"}))
    rect = _rect(request, data.get("rect"))
    color = integer(data.get("color", 0), "color")
    try:
        check_color(color)
    except InvalidPixel as exc:
        raise APIError(400, "bad_color", str(exc)) from exc
    return _answer(await _act(_moderators(request).fill(moderator.name, rect, color)))


async def _act(action: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    """An action's effect, or its errors as answers (503: nothing was done, or, if the
    store failed half-way, the audit log may lack it: see the message)."""
    try:
        return await action
    except TooManyPixels as exc:
        raise APIError(413, "too_many_pixels", str(exc)) from exc
    except StaleRun as exc:
        raise APIError(503, "unavailable", "the canvas is too busy to plan this now; try again",
                       headers={"Retry-After": "1"}) from exc  # fmt: skip
    except STORE_OUTAGES as exc:
        raise APIError(503, "unavailable",
                       "the store could not be reached; check the audit log, then try again",
                       headers={"Retry-After": "1"}) from exc  # fmt: skip


async def protect(request: Request) -> Response:
    """``POST /api/admin/protect``: placements inside a rectangle are refused."""
    moderator = await moderator_of(request)
    rect = _rect(request, (await _body(request, frozenset({"rect"}))).get("rect"))
    return _answer(await _act(_moderators(request).protect(moderator.name, rect)))


async def unprotect(request: Request) -> Response:
    """``POST /api/admin/unprotect``: lift a protected area, by id."""
    moderator = await moderator_of(request)
    area_id = integer((await _body(request, frozenset({"id"}))).get("id"), "id")
    if not 1 <= area_id <= MAX_ID:
        raise _bad(f"'id' must be within 1..{MAX_ID}")
    return _answer(await _act(_moderators(request).unprotect(moderator.name, area_id)))


async def freeze(request: Request) -> Response:
    """``POST /api/admin/freeze``: the canvas becomes read-only."""
    moderator = await moderator_of(request)
    await _body(request, frozenset())
    return _answer(await _act(_moderators(request).freeze(moderator.name, True)))


async def unfreeze(request: Request) -> Response:
    """``POST /api/admin/unfreeze``: placing again."""
    moderator = await moderator_of(request)
    await _body(request, frozenset())
    return _answer(await _act(_moderators(request).freeze(moderator.name, False)))


def ban_json(b: Ban) -> dict[str, object]:
    return {"kind": b.kind, "subject": b.subject, "reason": b.reason, "by": b.by,
            "at": iso(b.at), "expires_at": iso(b.expires_at)}  # fmt: skip


ADMIN_ROUTES = [
    Route("/me", whoami, methods=["GET"]),
    Route("/audit", audit, methods=["GET"]),
    Route("/bans", bans, methods=["GET"]),
    Route("/ban", ban, methods=["POST"]),
    Route("/unban", unban, methods=["POST"]),
    Route("/rollback", rollback, methods=["POST"]),
    Route("/fill", fill, methods=["POST"]),
    Route("/protect", protect, methods=["POST"]),
    Route("/unprotect", unprotect, methods=["POST"]),
    Route("/freeze", freeze, methods=["POST"]),
    Route("/unfreeze", unfreeze, methods=["POST"]),
]
