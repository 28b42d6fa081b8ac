"""What both backends do the same way with their durable log, with no I/O.

The embedded store (SQLite) and the persister (PostgreSQL) keep the same tables and
the same rules: the board size is fixed per database; the board is loaded from the
newest snapshot plus the log after it, which must continue without a gap; every
snapshot is kept, compressed, as a keyframe of the history (:mod:`openplace.core.timeline`);
a replay is complete or it is refused.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from openplace.core.board import Board, Geometry, apply_arrays
from openplace.core.history import TooOld


class LogCorrupt(RuntimeError):
    """The database does not hold what the configuration or the log's rules say."""


def size_text(geometry: Geometry) -> str:
    """How the board size is written in a database's metadata, e.g. ``1000x1000``."""
    return f"{geometry.width}x{geometry.height}"


def check_size(stored: str, geometry: Geometry, where: str) -> None:
    """Refuse a database that holds a board of another size than configured."""
    if stored != size_text(geometry):
        raise LogCorrupt(
            f"{where} holds a {stored} board, but {size_text(geometry)} is configured"
        )


def load_board(
    geometry: Geometry,
    snapshot: tuple[int, bytes] | None,
    seqs: Sequence[int],
    indexes: Sequence[int],
    colors: Sequence[int],
) -> tuple[Board, int]:
    """The board from a snapshot ``(seq, data)`` and the log rows after it, in seq order.

    Returns the board and the newest seq in it. The rows must continue the snapshot
    without a gap: a hole in the log is corruption, not a board to serve.
    """
    base, data = snapshot if snapshot is not None else (0, None)
    board = Board(geometry, data)
    n = len(seqs)
    if n:
        s = np.asarray(seqs, dtype=np.int64)
        if s[0] != base + 1 or s[-1] != base + n or (n > 1 and bool(np.any(np.diff(s) != 1))):
            raise LogCorrupt(
                f"the placement log has a gap after the snapshot at seq {base}: "
                f"{n} rows from {int(s[0])} to {int(s[-1])}"
            )
        apply_arrays(board.data, indexes, colors)
    return board, base + n


def pending_migrations(migrations: Sequence[str], version: int) -> list[tuple[int, str]]:
    """The numbered migrations (from 1) a database at schema ``version`` has not had."""
    return [(n, sql) for n, sql in enumerate(migrations, start=1) if n > version]


def check_complete(after: int, upto: int, held: int) -> None:
    """A replay of ``after+1 .. upto`` found ``held`` records: all of them, or ``TooOld``."""
    want = max(0, upto - after)
    if held != want:
        raise TooOld(f"placements {after + 1}..{upto} are not all held ({held} of {want})")


def keyframes_missing(have: Sequence[int], head: int, every: int) -> list[int]:
    """The seqs at which keyframes are missing: every stretch of the log ``0..head``
    longer than ``every`` without one (a database from before keyframes were kept)
    gets one each ``every`` placements. The stretch after the newest keyframe is left
    to the store (it writes the next one when it comes)."""
    targets: list[int] = []
    start = 0
    for end in [*sorted(k for k in set(have) if 0 < k <= head), head]:
        while end - start > every:
            start += every
            targets.append(start)
        start = end
    return targets
