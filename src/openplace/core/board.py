"""The packed board: 4 bits a pixel, in Redis ``BITFIELD u4 #i`` layout.

Pixel ``i = y * width + x`` lives in byte ``i // 2``; even ``i`` in the high nibble.
The bytes of a :class:`Board` are exactly what ``GET /api/board`` sends and what the
Redis key holds in distributed mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from openplace.core.palette import PALETTE

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    IntArray = Sequence[int] | npt.NDArray[np.integer[Any]]


class InvalidPixel(ValueError):
    """Coordinates or colour out of range; ``field`` is ``"coordinates"`` or ``"color"``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, slots=True)
class Geometry:
    """Board dimensions and the checks that depend on them."""

    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def nbytes(self) -> int:
        return self.pixels // 2

    def index(self, x: int, y: int) -> int:
        """The pixel index of (x, y), or :class:`InvalidPixel`."""
        if not (0 <= x < self.width and 0 <= y < self.height):
            raise InvalidPixel(
                "coordinates",
                f"coordinates ({x}, {y}) are outside the board "
                f"(0..{self.width - 1}, 0..{self.height - 1})",
            )
        return y * self.width + x

    def xy(self, index: int) -> tuple[int, int]:
        return index % self.width, index // self.width


def check_color(color: int) -> int:
    """Return ``color`` if it is a palette index, else raise :class:`InvalidPixel`."""
    if not 0 <= color < len(PALETTE):
        raise InvalidPixel("color", f"color must be a palette index 0..{len(PALETTE) - 1}")
    return color


class Board:
    """A mutable packed board."""

    __slots__ = ("data", "geometry")

    def __init__(self, geometry: Geometry, data: bytes | bytearray | None = None) -> None:
        self.geometry = geometry
        if data is None:
            self.data = bytearray(geometry.nbytes)
        else:
            if len(data) != geometry.nbytes:
                raise ValueError(f"board data is {len(data)} bytes, expected {geometry.nbytes}")
            self.data = bytearray(data)

    def get(self, index: int) -> int:
        b = self.data[index >> 1]
        return (b & 0x0F) if index & 1 else (b >> 4)

    def set(self, index: int, color: int) -> None:
        i = index >> 1
        b = self.data[i]
        self.data[i] = (b & 0xF0) | color if index & 1 else (b & 0x0F) | (color << 4)

    def apply_records(self, records: bytes | memoryview) -> None:
        """Apply packed placement records (see :mod:`openplace.core.wire`)."""
        data = self.data
        for off in range(0, len(records), 5):
            index = int.from_bytes(records[off : off + 4], "big")
            color = records[off + 4]
            i = index >> 1
            b = data[i]
            data[i] = (b & 0xF0) | color if index & 1 else (b & 0x0F) | (color << 4)

    def snapshot(self) -> bytes:
        return bytes(self.data)


def apply_arrays(data: bytearray, indexes: IntArray, colors: IntArray) -> None:
    """Apply many placements at once (in order; later ones win), vectorised with numpy."""
    import numpy as np

    idx = np.asarray(indexes, dtype=np.int64)
    col = np.asarray(colors, dtype=np.uint8)
    if idx.size == 0:
        return
    # Keep the last placement of each pixel.
    rev_unique, rev_pos = np.unique(idx[::-1], return_index=True)
    last_col = col[::-1][rev_pos]
    board = np.frombuffer(data, dtype=np.uint8)
    even = (rev_unique & 1) == 0
    for mask, keep, shift in ((even, 0x0F, 4), (~even, 0xF0, 0)):
        byte = rev_unique[mask] >> 1
        board[byte] = (board[byte] & keep) | (last_col[mask] << shift).astype(np.uint8)
