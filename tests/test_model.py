"""The pure canvas model and wire format."""

from __future__ import annotations

import pytest

from openplace.core.board import Board, Geometry, InvalidPixel, check_color
from openplace.core.history import History, TooOld
from openplace.core.palette import PALETTE
from openplace.core.wire import (
    MAX_RECORDS_PER_FRAME,
    FrameError,
    decode_frame,
    encode_frame,
    encode_record,
    split_frames,
)


def test_palette_is_the_2017_r_place_palette() -> None:
    assert len(PALETTE) == 16
    assert PALETTE[0] == "#FFFFFF" and PALETTE[5] == "#E50000" and PALETTE[15] == "#820080"


def test_board_starts_white_and_uses_redis_u4_layout() -> None:
    g = Geometry(4, 2)
    b = Board(g)
    assert b.data == bytearray(4)
    b.set(g.index(0, 0), 0xA)  # even index: high nibble of byte 0
    b.set(g.index(1, 0), 0x3)  # odd index: low nibble of byte 0
    b.set(g.index(3, 1), 0xF)  # index 7: low nibble of byte 3
    assert bytes(b.data) == bytes([0xA3, 0x00, 0x00, 0x0F])
    assert [b.get(i) for i in range(8)] == [0xA, 3, 0, 0, 0, 0, 0, 0xF]
    b.set(0, 1)  # overwrite keeps the neighbour
    assert b.data[0] == 0x13


def test_apply_records_matches_set() -> None:
    g = Geometry(10, 10)
    a, b = Board(g), Board(g)
    moves = [(i * 7 % 100, i % 16) for i in range(300)]
    for i, c in moves:
        a.set(i, c)
    b.apply_records(b"".join(encode_record(i, c) for i, c in moves))
    assert a.data == b.data


@pytest.mark.parametrize("x,y", [(-1, 0), (0, -1), (10, 0), (0, 5)])
def test_out_of_range_coordinates_are_refused(x: int, y: int) -> None:
    with pytest.raises(InvalidPixel):
        Geometry(10, 5).index(x, y)


@pytest.mark.parametrize("color", [-1, 16, 255])
def test_unknown_colours_are_refused(color: int) -> None:
    with pytest.raises(InvalidPixel):
        check_color(color)


def test_frame_round_trip_big_endian() -> None:
    records = encode_record(0x01020304, 7) + encode_record(999_999, 15)
    frame = encode_frame(2**40 + 5, records)
    assert frame[0] == 0x01
    assert frame[1:9] == (2**40 + 5).to_bytes(8, "big")
    assert frame[9:14] == bytes([1, 2, 3, 4, 7])
    assert decode_frame(frame) == (2**40 + 5, [(0x01020304, 7), (999_999, 15)])


@pytest.mark.parametrize("bad", [b"", b"\x02" + bytes(8), b"\x01" + bytes(8) + b"\x00\x00"])
def test_malformed_frames_are_refused(bad: bytes) -> None:
    with pytest.raises(FrameError):
        decode_frame(bad)


def test_long_runs_are_split_into_consecutive_frames() -> None:
    n = MAX_RECORDS_PER_FRAME + 10
    records = b"".join(encode_record(i, i % 16) for i in range(n))
    frames = list(split_frames(100, records))
    assert len(frames) == 2
    (s1, a), (s2, b) = decode_frame(frames[0]), decode_frame(frames[1])
    assert s1 == 100 and s2 == 100 + len(a) and len(a) + len(b) == n


def test_history_replays_exact_ranges_and_wraps() -> None:
    h = History(5)
    rec = [encode_record(i, i % 16) for i in range(1, 13)]
    h.append(1, b"".join(rec[:3]))
    assert h.records(0) == b"".join(rec[:3])
    h.append(4, b"".join(rec[3:8]))  # seqs 4..8; holds 4..8
    assert (h.first, h.head) == (4, 8)
    assert h.records(3) == b"".join(rec[3:8])
    assert h.records(6, 7) == rec[6]
    assert h.records(8) == b""
    with pytest.raises(TooOld):
        h.records(2)
    h.append(9, b"".join(rec[8:12]))  # wraps around
    assert h.records(7) == b"".join(rec[7:12])


def test_history_refuses_gaps() -> None:
    h = History(5)
    with pytest.raises(ValueError, match="gap"):
        h.append(2, encode_record(1, 1))
