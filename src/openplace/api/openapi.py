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
                        _429=_error("Too many sessions or connections from this address", True),
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
                "Health": _object(
                    {
                        "status": {"type": "string", "enum": ["ok"]},
                        "seq": {"type": "integer", "minimum": 0},
                    }
                ),
            },
        },
    }
