"""The board's past, with no I/O: keyframes, log slices, pictures and the history wire
format.

A *keyframe* is the packed board after some seq, stored compressed (every
``snapshot_every`` placements, for the whole history). The board after any seq ``N`` is
the newest keyframe at or before ``N`` plus the log slice after it, applied with numpy:
:func:`board_at`. Everything here works on numpy arrays and bytes; the storage backends
fetch them and :mod:`openplace.history` puts the pieces together.
"""

from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from openplace.core.board import Board, Geometry, apply_arrays
from openplace.core.palette import PALETTE
from openplace.core.wire import RECORD_SIZE

U8 = npt.NDArray[np.uint8]
# A 5-byte record as numpy reads it: index u32 big-endian, colour u8 (core/wire.py).
RECORD = np.dtype([("index", ">u4"), ("color", "u1")])
CODEC_RAW = "raw"
CODEC_ZLIB = "zlib"
KEYFRAME_CODEC = CODEC_ZLIB


class HistoryError(LookupError):
    """A point or range of the history that does not exist (yet)."""


def parse_time(text: str) -> float:
    """An ISO 8601 time (``Z`` or an offset; none means UTC) as unix seconds, or
    ``ValueError``."""
    when = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


_DURATION = re.compile(r"(\d+)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``90s``, ``15m``, ``12h`` or ``30d``, in seconds (``ValueError`` otherwise)."""
    match = _DURATION.fullmatch(text.strip())
    if match is None or int(match.group(1)) == 0:
        raise ValueError(f"{text[:40]!r} is not a duration like 90s, 15m, 12h or 30d")
    return int(match.group(1)) * _UNITS[match.group(2)]


# -- keyframes -----------------------------------------------------------------------


def encode_keyframe(board: bytes) -> bytes:
    """A packed board as a keyframe is stored (:data:`KEYFRAME_CODEC`)."""
    return zlib.compress(board, 6)


def decode_keyframe(data: bytes, codec: str) -> bytes:
    """The packed board of a stored keyframe (or of a snapshot stored before keyframes
    were compressed, codec ``raw``)."""
    if codec == CODEC_RAW:
        return bytes(data)
    if codec == CODEC_ZLIB:
        return zlib.decompress(data)
    raise ValueError(f"unknown keyframe codec {codec!r}")


# -- log slices ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LogSlice:
    """The placements ``after+1 .. after+len``, in seq order: pixel indexes, colours
    and (when asked for) times in unix seconds."""

    after: int
    indexes: npt.NDArray[np.int64]
    colors: U8
    times: npt.NDArray[np.float64] | None = None

    def __len__(self) -> int:
        return int(self.indexes.size)

    @property
    def upto(self) -> int:
        return self.after + len(self)

    @classmethod
    def of(cls, after: int, indexes: Any, colors: Any, times: Any = None) -> LogSlice:
        return cls(
            after,
            np.asarray(indexes, dtype=np.int64),
            np.asarray(colors, dtype=np.uint8),
            None if times is None else np.asarray(times, dtype=np.float64),
        )

    def head(self, n: int) -> LogSlice:
        """The first ``n`` placements of this slice."""
        times = None if self.times is None else self.times[:n]
        return LogSlice(self.after, self.indexes[:n], self.colors[:n], times)

    def check(self, upto: int) -> None:
        """Raise :class:`HistoryError` unless this slice is exactly ``after+1 .. upto``."""
        if self.upto != upto:
            raise HistoryError(
                f"the log holds {len(self)} placements after seq {self.after}, "
                f"{upto - self.after} were asked for"
            )

    def records(self) -> bytes:
        """The placements as 5-byte wire records."""
        out = np.empty(len(self), dtype=RECORD)
        out["index"] = self.indexes
        out["color"] = self.colors
        return out.tobytes()


def board_at(geometry: Geometry, keyframe: tuple[int, bytes] | None, log: LogSlice) -> bytes:
    """The packed board after ``log.upto``: the keyframe ``(seq, packed)`` at
    ``log.after`` (``None``: the empty board at seq 0) with the log applied."""
    base, data = keyframe if keyframe is not None else (0, None)
    if base != log.after:
        raise ValueError(f"the log continues seq {log.after}, the keyframe is at {base}")
    board = Board(geometry, data)
    apply_arrays(board.data, log.indexes, log.colors)
    return bytes(board.data)


# -- the history wire format ---------------------------------------------------------

HISTORY_TYPE = 0x02
_HISTORY_HEADER = struct.Struct(">BQI")  # type, first seq, count


def encode_history(log: LogSlice) -> bytes:
    """``GET /api/history``'s body: ``0x02 | first_seq u64 | k u32 | k records (5
    bytes) | k times (float64 unix seconds)``, all big-endian."""
    if log.times is None:
        raise ValueError("history needs the placements' times")
    header = _HISTORY_HEADER.pack(HISTORY_TYPE, log.after + 1, len(log))
    return header + log.records() + log.times.astype(">f8").tobytes()


def decode_history(body: bytes) -> LogSlice:
    """The inverse of :func:`encode_history` (clients and tests)."""
    kind, first, k = _HISTORY_HEADER.unpack_from(body)
    if kind != HISTORY_TYPE:
        raise ValueError(f"not a history body (type {kind})")
    start = _HISTORY_HEADER.size
    end = start + k * RECORD_SIZE
    if len(body) != end + 8 * k:
        raise ValueError("history body of the wrong length")
    recs = np.frombuffer(body, dtype=RECORD, count=k, offset=start)
    times = np.frombuffer(body, dtype=">f8", count=k, offset=end)
    return LogSlice.of(first - 1, recs["index"], recs["color"], times)


# -- pictures ------------------------------------------------------------------------

PALETTE_RGB: U8 = np.array(
    [[int(c[i : i + 2], 16) for i in (1, 3, 5)] for c in PALETTE], dtype=np.uint8
)


@dataclass(frozen=True, slots=True)
class Region:
    """A rectangle of the board: ``x, y`` its top-left pixel, ``w x h`` its size."""

    x: int
    y: int
    w: int
    h: int

    @classmethod
    def whole(cls, geometry: Geometry) -> Region:
        return cls(0, 0, geometry.width, geometry.height)

    @classmethod
    def parse(cls, text: str, geometry: Geometry) -> Region:
        """``"x,y,w,h"`` (as on the command line), checked against the board."""
        parts = text.split(",")
        if len(parts) != 4 or not all(p.strip().isdigit() for p in parts):
            raise ValueError("a region is x,y,w,h: four non-negative integers")
        x, y, w, h = (int(p) for p in parts)
        return cls(x, y, w, h).check(geometry)

    def check(self, geometry: Geometry) -> Region:
        if self.w < 1 or self.h < 1:
            raise ValueError("a region is at least 1x1")
        if self.x + self.w > geometry.width or self.y + self.h > geometry.height:
            raise ValueError(
                f"the region {self.x},{self.y},{self.w},{self.h} is outside the "
                f"{geometry.width}x{geometry.height} board"
            )
        return self


# Each packed byte (two pixels) straight to their six RGB bytes: one gather per frame.
PAIR_RGB: U8 = np.concatenate(
    [PALETTE_RGB[np.arange(256) >> 4], PALETTE_RGB[np.arange(256) & 0x0F]], axis=1
)


def packed_rgb(packed: bytes | bytearray, geometry: Geometry) -> U8:
    """The packed board as RGB, shape ``(height, width, 3)``."""
    pairs = PAIR_RGB[np.frombuffer(packed, dtype=np.uint8)]
    return pairs.reshape(geometry.height, geometry.width, 3)


def unpack(packed: bytes | bytearray, geometry: Geometry) -> U8:
    """The board as one colour index per pixel, shape ``(height, width)``."""
    b = np.frombuffer(packed, dtype=np.uint8)
    pixels = np.empty(b.size * 2, dtype=np.uint8)
    pixels[0::2] = b >> 4
    pixels[1::2] = b & 0x0F
    return pixels.reshape(geometry.height, geometry.width)


def crop_scale(image: npt.NDArray[Any], region: Region, scale: int) -> npt.NDArray[Any]:
    """``region`` of an image whose first two axes are ``(y, x)``, each pixel made a
    ``scale x scale`` square (nearest neighbour: pixel art stays sharp)."""
    out = image[region.y : region.y + region.h, region.x : region.x + region.w]
    if scale > 1:
        out = out.repeat(scale, axis=0).repeat(scale, axis=1)
    return out


def to_rgb(pixels: U8) -> U8:
    """Colour indexes to RGB, shape ``(..., 3)``."""
    return PALETTE_RGB[pixels]


def heat_counts(indexes: npt.NDArray[np.int64], geometry: Geometry) -> npt.NDArray[np.int64]:
    """Placements per pixel, shape ``(height, width)``."""
    counts = np.bincount(indexes, minlength=geometry.pixels)
    return counts[: geometry.pixels].reshape(geometry.height, geometry.width)


# Matt Zucker's polynomial fit of matplotlib's "inferno" (CC0): perceptually uniform,
# dark to bright, readable in greyscale.
_INFERNO = np.array(
    [
        [0.0002189403691192265, 0.001651004631001012, -0.01948089843709184],
        [0.1065134194856116, 0.5639564367884091, 3.932712388889277],
        [11.60249308247187, -3.972853965665698, -15.9423941062914],
        [-41.70399613139459, 17.43639888205313, 44.35414519872813],
        [77.162935699427, -33.40235894210092, -81.80730925738993],
        [-71.31942824499214, 32.62606426397723, 73.20951985803202],
        [25.13112622477341, -12.24266895238567, -23.07032500287172],
    ]
)


def heat_rgb(counts: npt.NDArray[np.int64]) -> U8:
    """A heatmap picture of ``counts``: log scale, the inferno colour map; pixels never
    placed on are black."""
    scaled = np.log1p(counts.astype(np.float64))
    top = float(scaled.max()) if scaled.size else 0.0
    t = scaled / top if top > 0 else scaled
    rgb = np.zeros((*t.shape, 3), dtype=np.float64)
    for power, coeffs in enumerate(_INFERNO):
        rgb += (t**power)[..., None] * coeffs
    out = (np.clip(rgb, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    out[counts == 0] = 0
    return out


# -- timelapse -----------------------------------------------------------------------


def frame_seqs(after: int, upto: int, frames: int) -> list[int]:
    """The seq each of ``frames`` frames shows, evenly spread over ``after+1 .. upto``
    and ending at ``upto`` (fewer frames when there are fewer placements)."""
    span = upto - after
    if span <= 0 or frames <= 0:
        return [upto] if frames > 0 else []
    n = min(frames, span)
    return [after + (span * (i + 1)) // n for i in range(n)]
