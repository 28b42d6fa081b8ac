"""Wire formats of the live stream.

A placement travels as a 5-byte *record*: ``index: u32 | color: u8``, big-endian.
A batch frame is ``0x01 | first_seq: u64 | record * k`` and carries the placements
with sequence numbers ``first_seq .. first_seq + k - 1``. Records are encoded once,
when a placement is accepted; frames are slices of them, encoded once for all clients.
Control messages are JSON text frames (see ``docs/protocol.md``).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

import orjson

FRAME_BATCH = 0x01
RECORD_SIZE = 5
HEADER_SIZE = 9
_HEADER = struct.Struct(">BQ")
_RECORD = struct.Struct(">IB")

# Frames are cut at this many records so no single message is huge.
MAX_RECORDS_PER_FRAME = 32_768


class FrameError(ValueError):
    """A binary frame that is not a well-formed batch."""


def encode_record(index: int, color: int) -> bytes:
    return _RECORD.pack(index, color)


def encode_frame(first_seq: int, records: bytes | bytearray | memoryview) -> bytes:
    """One batch frame from already-encoded records."""
    if len(records) % RECORD_SIZE:
        raise ValueError("records must be a whole number of 5-byte records")
    return _HEADER.pack(FRAME_BATCH, first_seq) + bytes(records)


def split_frames(first_seq: int, records: bytes | memoryview) -> Iterator[bytes]:
    """Frames for a run of records, at most :data:`MAX_RECORDS_PER_FRAME` each."""
    step = MAX_RECORDS_PER_FRAME * RECORD_SIZE
    view = memoryview(records)
    for off in range(0, len(view), step):
        yield encode_frame(first_seq + off // RECORD_SIZE, view[off : off + step])


def decode_frame(frame: bytes) -> tuple[int, list[tuple[int, int]]]:
    """``(first_seq, [(index, color), ...])`` of a batch frame."""
    if len(frame) < HEADER_SIZE or frame[0] != FRAME_BATCH:
        raise FrameError("not a batch frame")
    if (len(frame) - HEADER_SIZE) % RECORD_SIZE:
        raise FrameError("truncated record")
    _, first_seq = _HEADER.unpack_from(frame)
    items = [(i, c) for i, c in _RECORD.iter_unpack(memoryview(frame)[HEADER_SIZE:])]
    return first_seq, items


def control(kind: str, **fields: Any) -> str:
    """A JSON control message, e.g. ``control("resync", head=42)``."""
    return orjson.dumps({"type": kind, **fields}).decode()
