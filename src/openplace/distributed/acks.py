"""What is committed and what may be acknowledged: the rules, with no I/O.

Events go in (a placement accepted by Redis, a run announced by the persister, a
watermark read, a restored board), decisions come out (confirm, wait, check with
PostgreSQL, fetch a gap, reset). :mod:`.feed`, :mod:`.store` and :mod:`.persister`
do the I/O around these objects; the tests drive them directly.

The rule that keeps acknowledgements honest: a seq means something only together
with the board it was accepted under. Each Redis lifetime holds one board
(``<uid>.<epoch>``); the persister commits a board's stream in order and, before it
restores Redis under a newer epoch, drains what the old board still holds. So:

- a placement of the *current* board is durable once that board's committed
  watermark reaches its seq;
- a placement of an *older* board is durable only if PostgreSQL's log holds it under
  its seq *and* its epoch (the old board is finished: nothing more of it will ever be
  committed), whatever happened in between, however many restores were missed.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Generic, TypeVar


@dataclass(frozen=True, order=True, slots=True)
class BoardId:
    """One Redis lifetime of the board: the database's ``uid`` and the restore ``epoch``."""

    uid: str
    epoch: int

    @classmethod
    def parse(cls, text: str | bytes) -> BoardId:
        """``"<uid>.<epoch>"`` → :class:`BoardId`; ``ValueError`` if malformed."""
        if isinstance(text, bytes):
            text = text.decode("ascii")
        uid, sep, epoch = text.rpartition(".")
        if not sep or not uid or not epoch.isdigit():
            raise ValueError(f"not a board id: {text!r}")
        return cls(uid, int(epoch))

    def __str__(self) -> str:
        return f"{self.uid}.{self.epoch}"

    def older_than(self, other: BoardId) -> bool:
        """Whether this board is finished once ``other`` is current.

        A different uid (another database) is never coming back either.
        """
        return self.uid != other.uid or self.epoch < other.epoch


# -- the feed's position --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fetch:
    """Read the committed records ``after+1 .. upto`` (stream or log), then deliver them."""

    after: int
    upto: int


@dataclass(frozen=True, slots=True)
class Take:
    """Deliver the announced run, skipping its first ``skip`` records (already delivered)."""

    skip: int


@dataclass(frozen=True, slots=True)
class CatchUp:
    """The announcement is of another board: read the board id and watermark now."""


@dataclass(frozen=True, slots=True)
class Reset:
    """The board was replaced: ``board`` is current, committed up to ``head``."""

    board: BoardId
    head: int


FeedStep = Fetch | Take | CatchUp | Reset


class FeedCursor:
    """Where one process's view of the committed feed stands.

    Runs are delivered contiguously and in order: an announcement that skips ahead
    first fetches the gap, one that overlaps is trimmed, one of another board makes
    the process read the watermark, and a watermark of a new board is a reset.
    The I/O shell calls :meth:`delivered` after it has handed records on.
    """

    def __init__(self, board: BoardId, committed: int) -> None:
        self.board = board
        self.last = committed  # newest seq delivered

    def on_announcement(self, epoch: int, first: int, count: int) -> list[FeedStep]:
        """A run ``first .. first+count-1`` committed under ``epoch`` was announced."""
        if epoch != self.board.epoch:
            return [CatchUp()]
        end = first + count - 1
        if count <= 0 or end <= self.last:
            return []
        steps: list[FeedStep] = []
        if first > self.last + 1:  # announcements went missing
            steps.append(Fetch(self.last, first - 1))
            steps.append(Take(0))
        else:
            steps.append(Take(self.last + 1 - first))
        return steps

    def on_watermark(self, board: BoardId | None, committed: int) -> list[FeedStep]:
        """The board id and committed seq, read together (``None``: being restored)."""
        if board is None:
            return []
        if board != self.board:
            self.board, self.last = board, committed
            return [Reset(board, committed)]
        if committed > self.last:
            return [Fetch(self.last, committed)]
        return []

    def delivered(self, first: int, count: int) -> None:
        """Records ``first .. first+count-1`` were handed on."""
        if count > 0 and first <= self.last + 1:
            self.last = max(self.last, first + count - 1)


# -- acknowledgements -----------------------------------------------------------------


class Outcome(Enum):
    """What to answer a placement that Redis accepted."""

    CONFIRMED = "confirmed"  # durable: answer 200
    WAIT = "wait"  # not yet known
    CHECK = "check"  # its board is finished: ask PostgreSQL's log
    LOST = "lost"  # never committed: nothing changed


K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True, slots=True)
class Accepted:
    """What Redis said about one placement, to be matched against the log."""

    seq: int
    board: BoardId
    index: int
    color: int
    user_id: str


class Acks(Generic[K]):
    """The placements one API process is waiting to acknowledge, keyed by ``K``.

    Fed by the process's feed (:meth:`committed`, :meth:`reset`); answers each
    accepted placement with an :class:`Outcome`. Nothing is confirmed except by its
    own board's watermark or by the log row that is that very placement.
    """

    def __init__(self, board: BoardId | None = None, committed: int = 0) -> None:
        self.board = board
        self.committed = committed
        self._heap: list[tuple[int, int, K]] = []  # (seq, tiebreak, key)
        self._waiting: dict[K, Accepted] = {}
        self._counter = itertools.count()

    def __len__(self) -> int:
        return len(self._waiting)

    def accepted(self, key: K, placement: Accepted) -> Outcome:
        """Redis accepted ``placement``: is it durable already, or must it wait?"""
        board = self.board
        if board is not None and placement.board == board and placement.seq <= self.committed:
            return Outcome.CONFIRMED
        if board is not None and placement.board.older_than(board):
            self._waiting[key] = placement  # until checked
            return Outcome.CHECK
        self._waiting[key] = placement
        heapq.heappush(self._heap, (placement.seq, next(self._counter), key))
        return Outcome.WAIT

    def committed_upto(self, board: BoardId, upto: int) -> list[K]:
        """``board`` is committed up to ``upto``: the waiters this confirms."""
        if board != self.board:
            return []
        self.committed = max(self.committed, upto)
        done: list[K] = []
        later: list[tuple[int, int, K]] = []  # of a newer board: decided by its own reset
        heap = self._heap
        while heap and heap[0][0] <= upto:
            item = heapq.heappop(heap)
            placement = self._waiting.get(item[2])
            if placement is None:
                continue  # forgotten
            if placement.board == board:
                del self._waiting[item[2]]
                done.append(item[2])
            else:
                later.append(item)
        for item in later:
            heapq.heappush(heap, item)
        return done

    def reset(self, board: BoardId, head: int) -> tuple[list[K], list[K]]:
        """The current board is now ``board``, committed up to ``head``.

        Returns ``(confirmed, to_check)``: waiters of ``board`` itself that ``head``
        covers, and waiters of boards now finished, to look up in the log.
        """
        self.board, self.committed = board, head
        confirmed: list[K] = []
        check: list[K] = []
        keep: list[tuple[int, int, K]] = []
        for seq, tie, key in self._heap:
            placement = self._waiting.get(key)
            if placement is None:
                continue
            if placement.board == board and seq <= head:
                del self._waiting[key]
                confirmed.append(key)
            elif placement.board.older_than(board):
                check.append(key)
            else:
                keep.append((seq, tie, key))
        heapq.heapify(keep)
        self._heap = keep
        return confirmed, check

    def pending_checks(self) -> list[K]:
        """Waiters whose board is finished and that await a log lookup."""
        board = self.board
        if board is None:
            return []
        return [k for k, p in self._waiting.items() if p.board.older_than(board)]

    def placement(self, key: K) -> Accepted | None:
        return self._waiting.get(key)

    def checked(self, key: K, log_row: LogRow | None) -> Outcome:
        """The log's row at the placement's seq (``None``: no such row) decides."""
        placement = self._waiting.pop(key, None)
        if placement is None:
            return Outcome.LOST
        return Outcome.CONFIRMED if matches(placement, log_row) else Outcome.LOST

    def forget(self, key: K) -> None:
        """Stop tracking ``key`` (its request gave up waiting)."""
        self._waiting.pop(key, None)


@dataclass(frozen=True, slots=True)
class LogRow:
    """A row of PostgreSQL's placement log."""

    seq: int
    epoch: int
    index: int
    color: int
    user_id: str


def matches(placement: Accepted, row: LogRow | None) -> bool:
    """Whether ``row`` is ``placement`` itself, not another one under the same seq."""
    return (
        row is not None
        and row.seq == placement.seq
        and row.epoch == placement.board.epoch
        and row.index == placement.index
        and row.color == placement.color
        and row.user_id == placement.user_id
    )


# -- the persister's decisions --------------------------------------------------------


def continuing(committed: int, seqs: Sequence[int]) -> int:
    """How many of the stream entries ``seqs`` continue the log after ``committed``.

    0 means the stream does not continue where the log ends: Redis lost entries (it
    was restarted empty, or rewound), and the board must be restored.
    """
    for n, seq in enumerate(seqs):
        if seq != committed + 1 + n:
            return n
    return len(seqs)


def restore_reason(
    redis_board: BoardId | None,
    persister_board: BoardId,
    redis_seq: int,
    committed: int,
    *,
    requested: bool,
) -> str | None:
    """Why Redis must be restored from the log now, or ``None`` if it need not be."""
    if requested:
        return "restore requested"
    if redis_board is None:
        return "redis holds no board (restarted empty, or a restore was interrupted)"
    if redis_board != persister_board:
        return f"redis holds board {redis_board}, the log is at {persister_board}"
    if redis_seq < committed:
        return f"redis is behind the log (seq {redis_seq} < committed {committed})"
    return None
