"""What the API answers, as small immutable values."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, Decimal
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from openplace.core.board import Geometry
from openplace.core.timeline import PALETTE_RGB, unpack

if TYPE_CHECKING:
    from PIL.Image import Image

Colors = npt.NDArray[np.uint8]


def parse_time(value: object) -> datetime | None:
    """An ISO 8601 time of the API (``...Z``) as an aware datetime; ``None`` for anything
    else."""
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def format_time(when: datetime | str) -> str:
    """A time as the API reads it: an ISO string is passed on; a naive datetime is UTC."""
    if isinstance(when, str):
        return when
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def from_unix(seconds: float) -> datetime:
    """Unix seconds as a datetime, rounded *up* to the microsecond, so that asking for the
    board at a placement's time includes that placement."""
    micros = Decimal(seconds).scaleb(6).to_integral_value(ROUND_CEILING)
    return _EPOCH + timedelta(microseconds=int(micros))


@dataclass(frozen=True, slots=True)
class Session:
    """An anonymous identity: send ``token`` as ``Authorization: Bearer``."""

    token: str
    user_id: str


@dataclass(frozen=True, slots=True)
class CanvasInfo:
    """``GET /api/canvas``: the board's size, its palette and the cooldown."""

    width: int
    height: int
    palette: list[str]
    cooldown_seconds: float

    @property
    def geometry(self) -> Geometry:
        return Geometry(self.width, self.height)


@dataclass(frozen=True, slots=True)
class Placed:
    """An accepted placement: its ``seq`` and when this user may place again."""

    seq: int
    next_at: datetime | None
    x: int
    y: int
    color: int


@dataclass(frozen=True, slots=True)
class Placement:
    """One placement of the log or the live stream. ``at`` is known from the history
    only (the live stream does not carry times)."""

    seq: int
    x: int
    y: int
    color: int
    at: datetime | None = None


@dataclass(frozen=True, slots=True)
class PixelInfo:
    """``GET /api/pixel``: a pixel's colour and its latest placement (``None`` fields for
    a pixel never placed)."""

    x: int
    y: int
    color: int
    user_id: str | None
    placed_at: datetime | None
    seq: int | None


@dataclass(frozen=True, slots=True)
class PixelPlacement:
    """One entry of ``GET /api/pixel/history``: who placed ``color`` on a pixel, and when."""

    seq: int
    color: int
    user_id: str
    at: datetime | None


@dataclass(frozen=True, slots=True)
class Me:
    """``GET /api/me``: ``next_at`` is ``None`` when the user may place now."""

    user_id: str
    last_placed_at: datetime | None
    next_at: datetime | None


@dataclass(frozen=True, slots=True)
class Area:
    """A protected rectangle: ``x .. x+w-1`` by ``y .. y+h-1``."""

    id: int
    x: int
    y: int
    w: int
    h: int

    def __contains__(self, xy: object) -> bool:
        if not isinstance(xy, tuple) or len(xy) != 2:
            return False
        x, y = xy
        return bool(self.x <= x < self.x + self.w and self.y <= y < self.y + self.h)


@dataclass(frozen=True, slots=True)
class Policy:
    """``GET /api/policy`` (and the websocket's ``policy`` message)."""

    frozen: bool
    protected: list[Area] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Policy:
        areas = [Area(a["id"], a["x"], a["y"], a["w"], a["h"]) for a in data.get("protected", [])]
        return cls(bool(data.get("frozen")), areas)

    def allows(self, x: int, y: int) -> bool:
        """Whether a placement at (x, y) passes this policy (bans aside)."""
        return not self.frozen and not any((x, y) in a for a in self.protected)


@dataclass(eq=False, slots=True)
class Snapshot:
    """The board at one moment: ``colors[y, x]`` is a palette index (numpy ``uint8``,
    shape ``(height, width)``), ``seq`` the last placement included. ``board_id`` names
    the board the seq belongs to (``None`` for a past board)."""

    colors: Colors
    seq: int
    board_id: str | None

    @classmethod
    def from_packed(
        cls, packed: bytes, geometry: Geometry, seq: int, board_id: str | None
    ) -> Snapshot:
        """A snapshot of the packed bytes of ``GET /api/board``."""
        if len(packed) != geometry.nbytes:
            raise ValueError(f"a board of {len(packed)} bytes, expected {geometry.nbytes}")
        return cls(unpack(packed, geometry).copy(), seq, board_id)

    @property
    def width(self) -> int:
        return int(self.colors.shape[1])

    @property
    def height(self) -> int:
        return int(self.colors.shape[0])

    def __getitem__(self, xy: tuple[int, int]) -> int:
        """``snapshot[x, y]``: the colour index of pixel (x, y)."""
        x, y = xy
        return int(self.colors[y, x])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Snapshot):
            return NotImplemented
        return (
            self.seq == other.seq
            and self.board_id == other.board_id
            and np.array_equal(self.colors, other.colors)
        )

    def packed(self) -> bytes:
        """The board in the wire layout, the bytes ``GET /api/board`` sends."""
        flat = self.colors.reshape(-1)
        return ((flat[0::2] << 4) | flat[1::2]).astype(np.uint8).tobytes()

    def rgb(self) -> Colors:
        """The board as RGB, shape ``(height, width, 3)``."""
        return PALETTE_RGB[self.colors]

    def image(self, scale: int = 1) -> Image:
        """The board as a Pillow image (each pixel a ``scale`` x ``scale`` square)."""
        from PIL import Image

        img = Image.fromarray(self.rgb())
        if scale > 1:
            img = img.resize((self.width * scale, self.height * scale), Image.Resampling.NEAREST)
        return img
