"""A Python client of an openplace canvas: the HTTP API (:class:`AsyncCanvas`,
:class:`Canvas`) and the live board (:class:`LiveBoard`). See ``docs/client.md``."""

from openplace.client.canvas import AsyncCanvas, Canvas
from openplace.client.errors import (
    Banned,
    CanvasError,
    Cooldown,
    Forbidden,
    Frozen,
    InvalidRequest,
    NotFound,
    Protected,
    RateLimited,
    Unauthorized,
    Unavailable,
    Unconfirmed,
)
from openplace.client.live import LiveBoard, Placements
from openplace.client.models import (
    Area,
    CanvasInfo,
    Me,
    PixelInfo,
    Placed,
    Placement,
    Policy,
    Session,
    Snapshot,
)

__all__ = [
    "Area",
    "AsyncCanvas",
    "Banned",
    "Canvas",
    "CanvasError",
    "CanvasInfo",
    "Cooldown",
    "Forbidden",
    "Frozen",
    "InvalidRequest",
    "LiveBoard",
    "Me",
    "NotFound",
    "PixelInfo",
    "Placed",
    "Placement",
    "Placements",
    "Policy",
    "Protected",
    "RateLimited",
    "Session",
    "Snapshot",
    "Unauthorized",
    "Unavailable",
    "Unconfirmed",
]
