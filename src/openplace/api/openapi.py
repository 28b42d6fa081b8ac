"""The OpenAPI description of the HTTP API, served at ``/api/openapi.json``.

It is OpenAPI 3.0 on purpose: its schemas' ``integer`` is a JSON number without a
fraction (JSON Schema draft 4), which is what the API accepts. Under OpenAPI 3.1
(JSON Schema 2020-12) ``1.0`` is an integer too, and the API refuses it. Every answer
of every operation is listed, with its schema exactly (``additionalProperties: false``,
required fields), including the HTTP server's own refusals (:mod:`openplace.api.limits`).
The links let a stateful run chain a session to the operations that need its token.
"""

from __future__ import annotations

from typing import Any

from openplace import __version__
from openplace.api.params import MAX_SEQ, MAX_SIZE
from openplace.config import Settings


def _json(schema: str, description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }
    if headers:
        out["headers"] = headers
    return out


def _error(description: str, retry_after: bool = False) -> dict[str, Any]:
    return _json("Error", description, {"Retry-After": _RETRY_AFTER} if retry_after else None)


_RETRY_AFTER = {"required": True, "schema": {"type": "string", "pattern": "^[0-9]+$"}}
_TS = {"type": "string", "format": "date-time", "nullable": True}
_AUTH: list[dict[str, list[str]]] = [{"bearer": []}]
# What the HTTP server itself may answer to any request (openplace/api/limits.py).
_SERVER = {
    "408": {"$ref": "#/components/responses/Timeout"},
    "429": {"$ref": "#/components/responses/TooMany"},
    "431": {"$ref": "#/components/responses/HeadersTooLarge"},
}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "schema": schema, "description": description}


_SEQ_SCHEMA = {"type": "integer", "minimum": 0, "maximum": MAX_SEQ}
_SEQ = _query("seq", _SEQ_SCHEMA, "the board right after this placement")
_AT = _query("at", {"type": "string", "format": "date-time"}, "the board at this time")
_FROM = _query("from", _SEQ_SCHEMA, "first seq (default 1)")
_TO = _query("to", _SEQ_SCHEMA, "last seq (default: the newest; below from: none)")
_BEFORE = _query("before", {"type": "integer", "minimum": 1, "maximum": MAX_SEQ}, "ids below")
_LIMIT = _query("limit", {"type": "integer", "minimum": 1, "maximum": 500}, "default 50")
_AUDIT_ID = {"type": "integer", "minimum": 1}
_SEQ_OR_NONE = {"type": "integer", "minimum": 1, "nullable": True}
# What an action that writes pixels did: seqs first..last, by mod:<name>.
_RUN = {
    "audit_id": _AUDIT_ID,
    "first_seq": _SEQ_OR_NONE,
    "last_seq": _SEQ_OR_NONE,
    "pixels_changed": {"type": "integer", "minimum": 0},
    "pixels_left": {"type": "integer", "minimum": 0, "description": "placed on meanwhile"},
}
_RECT = {"$ref": "#/components/schemas/Rect"}
_AREA = {"$ref": "#/components/schemas/Area"}
_USER = {"type": "string", "minLength": 1, "maxLength": 64}
_NETWORK = {"type": "string", "description": "an IP address or a CIDR network"}
_DURATION = {"type": "string", "pattern": "^[0-9]+[smhd]$", "description": "e.g. 1h, 30d"}
_PNG = {
    "description": "A PNG",
    "headers": {"X-Seq": {"required": True, "schema": {"type": "integer"}}},
    "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
}


def _picture(settings: Settings) -> list[dict[str, Any]]:
    """``x, y, w, h`` (a region, cut at the board's edge) and ``scale``."""
    corner = {"x": settings.width - 1, "y": settings.height - 1}
    region = [
        _query(name, {"type": "integer", "minimum": 0, "maximum": top}, "region's corner")
        for name, top in corner.items()
    ] + [
        _query(
            name,
            {"type": "integer", "minimum": 1, "maximum": MAX_SIZE},
            "region's size (cut at the board's edge)",
        )
        for name in ("w", "h")
    ]
    return [*region, _query("scale", {"type": "integer", "minimum": 1, "maximum": 16}, "scale")]


def _object(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
        "additionalProperties": False,
    }


def _responses(**codes: dict[str, Any]) -> dict[str, Any]:
    """An operation's answers: ``codes`` (status -> response), the server's own, and
    400 for a request that is not valid HTTP."""
    out = {"400": _error("Bad request"), **_SERVER}
    out.update({code.lstrip("_"): r for code, r in codes.items()})
    return dict(sorted(out.items()))


_MODERATOR_ONLY = {
    "_401": _error("No moderator token, or a bad, expired or revoked one"),
    "_403": _error("A user's token"),
}


def _admin_post(
    operation_id: str, summary: str, request: str | None, answer: str, writes: bool = False
) -> dict[str, Any]:
    """An admin action: a JSON object in (``request``; ``None``: an empty one, which may
    be left out), ``answer`` out, recorded in the audit log. ``writes``: it writes pixels
    (rollback, fill), within ``OPENPLACE_ADMIN_MAX_PIXELS``."""
    codes = {
        "_200": _json(answer, "Done, and recorded in the audit log"),
        "_400": _error(
            "Bad JSON, unknown or bad fields (bad_request), a rectangle not inside the "
            "board (bad_rect), a bad colour (bad_color)"
        ),
        **_MODERATOR_ONLY,
        "_413": _error("Body over 64 KiB (body_too_large)"),
    }
    if writes:
        codes["_413"] = _error(
            "Body over 64 KiB (body_too_large), or the action would write more pixels "
            "than OPENPLACE_ADMIN_MAX_PIXELS (too_many_pixels); nothing changed"
        )
        codes["_503"] = _error("The canvas is too busy to plan this now; nothing changed", True)
    return {
        "post": {
            "operationId": operation_id,
            "summary": summary,
            "security": _AUTH,
            "requestBody": {
                "required": request is not None,
                "content": {
                    "application/json": {
                        "schema": {"$ref": f"#/components/schemas/{request or 'Empty'}"}
                    }
                },
            },
            "responses": _responses(**codes),
        }
    }


def _session_links() -> dict[str, Any]:
    bearer = {"header.Authorization": "Bearer {$response.body#/token}"}
    return {
        "Me": {"operationId": "getMe", "parameters": bearer},
        "Place": {"operationId": "placePixel", "parameters": bearer},
    }


def openapi_schema(settings: Settings) -> dict[str, Any]:
    x_max, y_max = settings.width - 1, settings.height - 1
    coords = [
        {
            "name": name,
            "in": "query",
            "required": True,
            "schema": {"type": "integer", "minimum": 0, "maximum": top},
        }
        for name, top in (("x", x_max), ("y", y_max))
    ]
    unavailable = _error("The store cannot be reached now; nothing changed", retry_after=True)
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "openplace",
            "version": __version__,
            "description": "A real-time collaborative pixel canvas. Live updates: "
            "websocket GET /ws?since=N, see docs/protocol.md.",
        },
        "paths": {
            "/api/canvas": {
                "get": {
                    "operationId": "getCanvas",
                    "summary": "Board size, palette and cooldown",
                    "responses": _responses(_200=_json("Canvas", "OK")),
                }
            },
            "/api/session": {
                "post": {
                    "operationId": "createSession",
                    "summary": "Create an anonymous identity (rate-limited per IP)",
                    "responses": _responses(
                        _201={**_json("Session", "Created"), "links": _session_links()},
                        _403=_error("This address is banned (banned; reason, expires_at)"),
                        _429=_error(
                            "Too many sessions from this address this minute or day "
                            "(rate_limited), or too many connections",
                            True,
                        ),
                        _503=unavailable,
                    ),
                }
            },
            "/api/board": {
                "get": {
                    "operationId": "getBoard",
                    "summary": "The packed board, 4 bits a pixel (Redis BITFIELD u4 layout)",
                    "description": "Pixel i = y*width + x is in byte i//2, high nibble for even i. "
                    "Header X-Seq: seq of the last placement included; resume /ws from it. "
                    "With seq or at: the board right after that placement (or at that time), "
                    "from the durable history, immutable (no X-Board-Id). Both: the earlier.",
                    "parameters": [_SEQ, _AT],
                    "responses": _responses(
                        _200={
                            "description": "width*height/2 bytes (gzip-encoded if accepted)",
                            "headers": {
                                "X-Seq": {"required": True, "schema": {"type": "integer"}},
                                "X-Board-Id": {
                                    "schema": {"type": "string"},
                                    "description": "the live board's id (not with seq or at)",
                                },
                                "ETag": {"required": True, "schema": {"type": "string"}},
                            },
                            "content": {
                                "application/octet-stream": {
                                    "schema": {"type": "string", "format": "binary"}
                                }
                            },
                        },
                        _304={"description": "Not modified (If-None-Match)"},
                        _400=_error("Bad seq or time, or both given"),
                        _404=_error("That seq is not (yet) in the history"),
                        _503=unavailable,
                    ),
                }
            },
            "/api/board.png": {
                "get": {
                    "operationId": "getBoardPng",
                    "summary": "The board as a PNG: now, or at a seq or time; scaled; a region",
                    "parameters": [_SEQ, _AT, *_picture(settings)],
                    "responses": _responses(
                        _200=_PNG,
                        _304={"description": "Not modified (If-None-Match)"},
                        _400=_error("Bad seq, time, region or scale"),
                        _404=_error("That seq is not (yet) in the history"),
                        _503=unavailable,
                    ),
                }
            },
            "/api/heatmap.png": {
                "get": {
                    "operationId": "getHeatmapPng",
                    "summary": "Placements per pixel in from..to, log scale, as a PNG",
                    "parameters": [_FROM, _TO, *_picture(settings)],
                    "responses": _responses(
                        _200=_PNG,
                        _304={"description": "Not modified (If-None-Match)"},
                        _400=_error("Bad range, region or scale"),
                        _404=_error("from is beyond the history"),
                        _503=unavailable,
                    ),
                }
            },
            "/api/history": {
                "get": {
                    "operationId": "getHistory",
                    "summary": "Placements from..to as 5-byte records and their times",
                    "description": "Binary: 0x02 | first_seq u64 | k u32 | k records (index "
                    "u32, colour u8) | k times (float64 unix seconds), big-endian. At most "
                    f"{settings.history_max_records} records; X-Next names where to go on.",
                    "parameters": [_FROM, _TO],
                    "responses": _responses(
                        _200={
                            "description": "The records (gzip-encoded if accepted)",
                            "headers": {
                                "X-Seq": {"required": True, "schema": {"type": "integer"}},
                                "X-Next": {"schema": {"type": "integer"}},
                            },
                            "content": {
                                "application/octet-stream": {
                                    "schema": {"type": "string", "format": "binary"}
                                }
                            },
                        },
                        _400=_error("Bad range"),
                        _404=_error("from is beyond the history"),
                        _503=unavailable,
                    ),
                }
            },
            "/api/pixel/history": {
                "get": {
                    "operationId": "getPixelHistory",
                    "summary": "Who placed what on this pixel, and when, newest first",
                    "parameters": [
                        *coords,
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                        },
                    ],
                    "responses": _responses(
                        _200=_json("PixelHistory", "OK"),
                        _400=_error("Bad coordinates or limit"),
                        _503=unavailable,
                    ),
                }
            },
            "/api/pixel": {
                "post": {
                    "operationId": "placePixel",
                    "summary": "Place a pixel",
                    "security": _AUTH,
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/PlaceRequest"}
                            }
                        },
                    },
                    "responses": _responses(
                        _200={
                            **_json("Placed", "Placed and durable"),
                            "links": {
                                "PixelInfo": {
                                    "operationId": "getPixel",
                                    "parameters": {
                                        "query.x": "$request.body#/x",
                                        "query.y": "$request.body#/y",
                                    },
                                },
                                "Me": {
                                    "operationId": "getMe",
                                    "parameters": {
                                        "header.Authorization": "$request.header.Authorization"
                                    },
                                },
                            },
                        },
                        _400=_error("Bad coordinates, colour, body or Authorization header"),
                        _401=_error("Missing or invalid token"),
                        _403=_error(
                            "Refused by the moderators: the canvas is frozen (frozen), the "
                            "user or address is banned (banned; reason, expires_at), or the "
                            "pixel is in a protected area (protected)"
                        ),
                        _413=_error("Body too large"),
                        _429=_error(
                            "Cooldown (retry_after, next_at), or too many connections", True
                        ),
                        _503=_error(
                            "Not stored (unavailable) or not confirmed in time (unconfirmed)", True
                        ),
                    ),
                },
                "get": {
                    "operationId": "getPixel",
                    "summary": "Who placed this pixel, and when",
                    "parameters": coords,
                    "responses": _responses(
                        _200=_json("PixelInfo", "OK"),
                        _400=_error("Bad coordinates"),
                        _503=unavailable,
                    ),
                },
            },
            "/api/me": {
                "get": {
                    "operationId": "getMe",
                    "summary": "My cooldown",
                    "security": _AUTH,
                    "responses": _responses(
                        _200=_json("Me", "OK"),
                        _400=_error("More than one Authorization header"),
                        _401=_error("Missing or invalid token"),
                        _503=unavailable,
                    ),
                }
            },
            "/api/admin/me": {
                "get": {
                    "operationId": "getModerator",
                    "summary": "The moderator a moderator token names (openplace admin token)",
                    "security": _AUTH,
                    "responses": _responses(
                        _200=_json("Moderator", "OK"),
                        _401=_error("No moderator token, or a bad, expired or revoked one"),
                        _403=_error("A user's token"),
                        _503=unavailable,
                    ),
                }
            },
            "/api/admin/audit": {
                "get": {
                    "operationId": "getAudit",
                    "summary": "Admin actions, newest first; page with before=next_before",
                    "security": _AUTH,
                    "parameters": [_BEFORE, _LIMIT],
                    "responses": _responses(
                        _200=_json("Audit", "OK"),
                        _400=_error("Bad before or limit"),
                        _401=_error("No moderator token, or a bad, expired or revoked one"),
                        _403=_error("A user's token"),
                        _503=unavailable,
                    ),
                }
            },
            "/api/admin/bans": {
                "get": {
                    "operationId": "getBans",
                    "summary": "The bans in force (not expired)",
                    "security": _AUTH,
                    "responses": _responses(_200=_json("Bans", "OK"), **_MODERATOR_ONLY),
                }
            },
            "/api/admin/ban": _admin_post(
                "ban",
                "Ban a user (placing) or a network (placing and new sessions)",
                "BanRequest",
                "Banned",
            ),
            "/api/admin/unban": _admin_post(
                "unban", "Lift a user's or a network's ban", "UnbanRequest", "Removed"
            ),
            "/api/admin/rollback": _admin_post(
                "rollback",
                "Undo users' or a network's placements since a time, as placements by mod:<name>",
                "RollbackRequest",
                "RolledBack",
                writes=True,
            ),
            "/api/admin/fill": _admin_post(
                "fill",
                "Set a rectangle to one colour (default 0: clear it), as placements by mod:<name>",
                "FillRequest",
                "Filled",
                writes=True,
            ),
            "/api/admin/protect": _admin_post(
                "protect", "Refuse placements inside a rectangle", "ProtectRequest", "Protected"
            ),
            "/api/admin/unprotect": _admin_post(
                "unprotect", "Lift a protected area", "UnprotectRequest", "Removed"
            ),
            "/api/admin/freeze": _admin_post("freeze", "Make the canvas read-only", None, "Frozen"),
            "/api/admin/unfreeze": _admin_post(
                "unfreeze", "Let placements in again", None, "Frozen"
            ),
            "/api/policy": {
                "get": {
                    "operationId": "getPolicy",
                    "summary": "Whether the canvas is frozen, and its protected areas",
                    "responses": _responses(
                        _200={
                            **_json("Policy", "OK"),
                            "headers": {
                                "Cache-Control": {
                                    "required": True,
                                    "schema": {"type": "string", "enum": ["no-cache"]},
                                },
                            },
                        }
                    ),
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "getHealth",
                    "summary": "Liveness: the board can be read",
                    "responses": _responses(_200=_json("Health", "OK"), _503=unavailable),
                }
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {
                "Timeout": _error("The request's headers or body took too long"),
                "TooMany": _error("Too many connections or requests from this address", True),
                "HeadersTooLarge": _error("The request line and headers are too large"),
            },
            "schemas": {
                "Error": _object(
                    {
                        "error": {"type": "string"},
                        "message": {"type": "string"},
                        "retry_after": {"type": "number", "minimum": 0},
                        "next_at": {"type": "string", "format": "date-time"},
                        "reason": {"type": "string"},
                        "expires_at": _TS,
                    },
                    required=["error", "message"],
                ),
                "Canvas": _object(
                    {
                        "width": {"type": "integer", "minimum": 1},
                        "height": {"type": "integer", "minimum": 1},
                        "palette": {
                            "type": "array",
                            "items": {"type": "string", "pattern": "^#[0-9A-F]{6}$"},
                            "minItems": 16,
                            "maxItems": 16,
                        },
                        "cooldown_seconds": {"type": "number", "minimum": 0},
                    }
                ),
                "Session": _object({"token": {"type": "string"}, "user_id": {"type": "string"}}),
                "PlaceRequest": _object(
                    {
                        "x": {"type": "integer", "minimum": 0, "maximum": x_max},
                        "y": {"type": "integer", "minimum": 0, "maximum": y_max},
                        "color": {"type": "integer", "minimum": 0, "maximum": 15},
                    }
                ),
                "Placed": _object(
                    {
                        "seq": {"type": "integer", "minimum": 1},
                        "next_at": {"type": "string", "format": "date-time"},
                    }
                ),
                "Me": _object(
                    {"user_id": {"type": "string"}, "last_placed_at": _TS, "next_at": _TS}
                ),
                "PixelInfo": _object(
                    {
                        "x": {"type": "integer", "minimum": 0, "maximum": x_max},
                        "y": {"type": "integer", "minimum": 0, "maximum": y_max},
                        "color": {"type": "integer", "minimum": 0, "maximum": 15},
                        "user_id": {"type": "string", "nullable": True},
                        "placed_at": _TS,
                        "seq": {"type": "integer", "minimum": 1, "nullable": True},
                    }
                ),
                "PixelHistory": _object(
                    {
                        "x": {"type": "integer", "minimum": 0, "maximum": x_max},
                        "y": {"type": "integer", "minimum": 0, "maximum": y_max},
                        "placements": {
                            "type": "array",
                            "items": _object(
                                {
                                    "seq": {"type": "integer", "minimum": 1},
                                    "color": {"type": "integer", "minimum": 0, "maximum": 15},
                                    "user_id": {"type": "string"},
                                    "placed_at": {"type": "string", "format": "date-time"},
                                }
                            ),
                        },
                    }
                ),
                "Moderator": _object(
                    {
                        "name": {"type": "string"},
                        "issued_at": {"type": "string", "format": "date-time"},
                        "expires_at": _TS,
                    }
                ),
                "Audit": _object(
                    {
                        "entries": {
                            "type": "array",
                            "items": _object(
                                {
                                    "id": {"type": "integer", "minimum": 1},
                                    "at": {"type": "string", "format": "date-time"},
                                    "actor": {"type": "string"},
                                    "action": {"type": "string"},
                                    "args": {"type": "object"},
                                    "effect": {"type": "object"},
                                }
                            ),
                        },
                        "next_before": {"type": "integer", "minimum": 1, "nullable": True},
                    }
                ),
                "Rect": _object(
                    {
                        "x": {"type": "integer", "minimum": 0, "maximum": x_max},
                        "y": {"type": "integer", "minimum": 0, "maximum": y_max},
                        "w": {"type": "integer", "minimum": 1, "maximum": settings.width},
                        "h": {"type": "integer", "minimum": 1, "maximum": settings.height},
                    }
                ),
                "Area": _object(
                    {
                        "id": {"type": "integer", "minimum": 1},
                        "x": {"type": "integer", "minimum": 0, "maximum": x_max},
                        "y": {"type": "integer", "minimum": 0, "maximum": y_max},
                        "w": {"type": "integer", "minimum": 1, "maximum": settings.width},
                        "h": {"type": "integer", "minimum": 1, "maximum": settings.height},
                    }
                ),
                "Ban": _object(
                    {
                        "kind": {"type": "string", "enum": ["user", "network"]},
                        "subject": {"type": "string"},
                        "reason": {"type": "string"},
                        "by": {"type": "string"},
                        "at": {"type": "string", "format": "date-time"},
                        "expires_at": _TS,
                    }
                ),
                "Policy": _object(
                    {"frozen": {"type": "boolean"}, "protected": {"type": "array", "items": _AREA}}
                ),
                "Empty": _object({}),
                "BanRequest": {
                    **_object(
                        {
                            "user": _USER,
                            "network": _NETWORK,
                            "reason": {"type": "string", "minLength": 1, "maxLength": 200},
                            "expires_in": {**_DURATION, "nullable": True},
                        },
                        required=["reason"],
                    ),
                    "oneOf": [{"required": ["user"]}, {"required": ["network"]}],
                },
                "UnbanRequest": {
                    **_object({"user": _USER, "network": _NETWORK}, required=[]),
                    "oneOf": [{"required": ["user"]}, {"required": ["network"]}],
                },
                "RollbackRequest": {
                    **_object(
                        {
                            "users": {"type": "array", "items": _USER},
                            "network": {**_NETWORK, "nullable": True},
                            "since": {
                                "type": "string",
                                "description": "an ISO 8601 time, or a duration back from "
                                "now: 90s, 15m, 1h, 2d",
                            },
                            "rect": {**_RECT, "nullable": True},
                        },
                        required=["since"],
                    ),
                    "anyOf": [
                        {"required": ["users"], "properties": {"users": {"minItems": 1}}},
                        {"required": ["network"], "properties": {"network": {"type": "string"}}},
                    ],
                },
                "FillRequest": _object(
                    {"rect": _RECT, "color": {"type": "integer", "minimum": 0, "maximum": 15}},
                    required=["rect"],
                ),
                "ProtectRequest": _object({"rect": _RECT}),
                "UnprotectRequest": _object({"id": {"type": "integer"}}),
                "Banned": _object(
                    {
                        "audit_id": _AUDIT_ID,
                        "ban": {"$ref": "#/components/schemas/Ban"},
                        "users_banned": {"type": "array", "items": {"type": "string"}},
                        "networks_banned": {"type": "array", "items": {"type": "string"}},
                    },
                    required=["audit_id", "ban"],
                ),
                "Removed": _object({"audit_id": _AUDIT_ID, "removed": {"type": "boolean"}}),
                "Bans": _object(
                    {"bans": {"type": "array", "items": {"$ref": "#/components/schemas/Ban"}}}
                ),
                "RolledBack": _object(
                    {
                        **_RUN,
                        "placements_undone": {"type": "integer", "minimum": 0},
                        "users": {"type": "integer", "minimum": 0},
                    }
                ),
                "Filled": _object(_RUN),
                "Protected": _object({"audit_id": _AUDIT_ID, "area": _AREA}),
                "Frozen": _object({"audit_id": _AUDIT_ID, "frozen": {"type": "boolean"}}),
                "Health": _object(
                    {
                        "status": {"type": "string", "enum": ["ok"]},
                        "seq": {"type": "integer", "minimum": 0},
                    }
                ),
            },
        },
    }
