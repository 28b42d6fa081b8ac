"""The OpenAPI 3.1 description of the HTTP API, served at ``/api/openapi.json``."""

from __future__ import annotations

from typing import Any

from openplace import __version__
from openplace.config import Settings


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _ok(schema: str, description: str = "OK") -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


_TS = {"type": ["string", "null"], "format": "date-time"}
_AUTH: list[dict[str, list[str]]] = [{"bearer": []}]


def openapi_schema(settings: Settings) -> dict[str, Any]:
    coords = [
        {
            "name": "x",
            "in": "query",
            "required": True,
            "schema": {"type": "integer", "minimum": 0, "maximum": settings.width - 1},
        },
        {
            "name": "y",
            "in": "query",
            "required": True,
            "schema": {"type": "integer", "minimum": 0, "maximum": settings.height - 1},
        },
    ]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "openplace",
            "version": __version__,
            "description": "A real-time collaborative pixel canvas. Live updates: "
            "websocket GET /ws?since=N, see docs/protocol.md.",
        },
        "paths": {
            "/api/canvas": {
                "get": {
                    "summary": "Board size, palette and cooldown",
                    "responses": {"200": _ok("Canvas")},
                }
            },
            "/api/session": {
                "post": {
                    "summary": "Create an anonymous identity (rate-limited per IP)",
                    "responses": {
                        "201": _ok("Session", "Created"),
                        "429": _error("Too many sessions from this address"),
                    },
                }
            },
            "/api/board": {
                "get": {
                    "summary": "The packed board, 4 bits a pixel (Redis BITFIELD u4 layout)",
                    "description": "Pixel i = y*width + x is in byte i//2, high nibble for even i. "
                    "Header X-Seq: seq of the last placement included; resume /ws from it.",
                    "responses": {
                        "200": {
                            "description": "width*height/2 bytes",
                            "headers": {
                                "X-Seq": {"schema": {"type": "integer"}},
                                "ETag": {"schema": {"type": "string"}},
                            },
                            "content": {
                                "application/octet-stream": {
                                    "schema": {"type": "string", "format": "binary"}
                                }
                            },
                        },
                        "304": {"description": "Not modified (If-None-Match)"},
                    },
                }
            },
            "/api/pixel": {
                "post": {
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
                    "responses": {
                        "200": _ok("Placed"),
                        "400": _error("Bad coordinates, colour or body"),
                        "401": _error("Missing or invalid token"),
                        "413": _error("Body too large"),
                        "429": _error("Cooldown: see retry_after, next_at and Retry-After"),
                        "503": _error("Could not be stored; nothing changed"),
                    },
                },
                "get": {
                    "summary": "Who placed this pixel, and when",
                    "parameters": coords,
                    "responses": {"200": _ok("PixelInfo"), "400": _error("Bad coordinates")},
                },
            },
            "/api/me": {
                "get": {
                    "summary": "My cooldown",
                    "security": _AUTH,
                    "responses": {"200": _ok("Me"), "401": _error("Missing or invalid token")},
                }
            },
            "/healthz": {
                "get": {"summary": "Liveness", "responses": {"200": {"description": "OK"}}}
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error", "message"],
                    "properties": {
                        "error": {"type": "string"},
                        "message": {"type": "string"},
                        "retry_after": {"type": "number"},
                        "next_at": _TS,
                    },
                },
                "Canvas": {
                    "type": "object",
                    "properties": {
                        "width": {"type": "integer"},
                        "height": {"type": "integer"},
                        "palette": {
                            "type": "array",
                            "items": {"type": "string"},
                            "minItems": 16,
                            "maxItems": 16,
                        },
                        "cooldown_seconds": {"type": "number"},
                    },
                },
                "Session": {
                    "type": "object",
                    "properties": {"token": {"type": "string"}, "user_id": {"type": "string"}},
                },
                "PlaceRequest": {
                    "type": "object",
                    "required": ["x", "y", "color"],
                    "properties": {
                        "x": {"type": "integer", "minimum": 0, "maximum": settings.width - 1},
                        "y": {"type": "integer", "minimum": 0, "maximum": settings.height - 1},
                        "color": {"type": "integer", "minimum": 0, "maximum": 15},
                    },
                },
                "Placed": {
                    "type": "object",
                    "properties": {
                        "seq": {"type": "integer"},
                        "next_at": {"type": "string", "format": "date-time"},
                    },
                },
                "Me": {
                    "type": "object",
                    "properties": {
                        "user_id": {"type": "string"},
                        "last_placed_at": _TS,
                        "next_at": _TS,
                    },
                },
                "PixelInfo": {
                    "type": "object",
                    "properties": {
                        "x": {"type": "integer"},
                        "y": {"type": "integer"},
                        "color": {"type": "integer"},
                        "user_id": {"type": ["string", "null"]},
                        "placed_at": _TS,
                        "seq": {"type": ["integer", "null"]},
                    },
                },
            },
        },
    }
