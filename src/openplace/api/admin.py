"""``/api/admin/``: what moderators do, behind a moderator token.

Every admin request proves a moderator: a valid moderator token (``openplace admin
token``), not expired, and not revoked, checked against the store each time, so a
revocation holds at once in every process. Anyone else gets 401 (no token, a bad or
expired one, a revoked one) or 403 (a user's token), as JSON. Every action is recorded
in the audit log.
"""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from openplace.api.errors import APIError
from openplace.api.json import JSONResponse
from openplace.api.params import MAX_SEQ, query_number
from openplace.api.placing import authorization_of, bearer_token, iso
from openplace.auth.moderators import Moderator
from openplace.auth.tokens import InvalidToken
from openplace.core.audit import AuditEntry
from openplace.state import state_of

AUDIT_PAGE_MAX = 500
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
    revoked = await state.moderation.revoked_at(moderator.name)
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
    entries = await state_of(request).moderation.audit(before, limit)
    return JSONResponse(
        {
            "entries": [entry_json(e) for e in entries],
            "next_before": entries[-1].id if len(entries) == limit else None,
        },
        headers={"Cache-Control": "no-store"},
    )


ADMIN_ROUTES = [
    Route("/me", whoami, methods=["GET"]),
    Route("/audit", audit, methods=["GET"]),
]
