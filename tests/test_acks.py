"""The acknowledgement rules (distributed/acks.py), driven in-process.

The state machine at the end plays a whole distributed world in memory: Redis
accepting placements and dying, the persister committing and restoring, announcements
lost or late, Lua replies lost and retried, and one API process's feed and
acknowledgements. Whatever the interleaving, no placement is confirmed unless
PostgreSQL's log holds that very placement, and once the world settles every
placement the log holds is confirmed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

from openplace.distributed.acks import (
    Accepted,
    Acks,
    BoardId,
    CatchUp,
    FeedCursor,
    FeedStep,
    Fetch,
    LogRow,
    Outcome,
    Reset,
    Take,
    continuing,
    restore_reason,
)

A, B, C = BoardId("u", 1), BoardId("u", 2), BoardId("u", 3)


def acc(seq: int, board: BoardId, user: str = "x") -> Accepted:
    return Accepted(seq, board, seq, seq % 16, user)


def row(p: Accepted) -> LogRow:
    return LogRow(p.seq, p.board.epoch, p.index, p.color, p.user_id)


# -- board ids ------------------------------------------------------------------------


def test_board_id_round_trips_and_refuses_garbage() -> None:
    assert BoardId.parse("9eec1815.2") == BoardId("9eec1815", 2)
    assert BoardId.parse(b"ab.10") == BoardId("ab", 10)
    assert str(BoardId("ab", 10)) == "ab.10"
    for bad in ("", "ab", "ab.", ".3", "ab.x", "ab.-1"):
        with pytest.raises(ValueError):
            BoardId.parse(bad)
    assert A.older_than(B) and not B.older_than(A) and not A.older_than(A)
    assert BoardId("other", 5).older_than(A)  # another database's board never returns


# -- the feed cursor ------------------------------------------------------------------


def test_cursor_delivers_in_order_fills_gaps_and_trims_overlaps() -> None:
    cur = FeedCursor(A, 10)
    assert cur.on_announcement(1, 11, 3) == [Take(0)]
    cur.delivered(11, 3)
    assert cur.on_announcement(1, 12, 4) == [Take(2)]  # 12, 13 already delivered
    cur.delivered(14, 2)
    assert cur.on_announcement(1, 20, 2) == [Fetch(15, 19), Take(0)]  # 16..19 missed
    assert cur.on_announcement(1, 5, 3) == []  # old news
    assert cur.on_announcement(2, 100, 1) == [CatchUp()]  # another board


def test_cursor_resets_on_a_new_board_with_the_watermark_read_with_it() -> None:
    cur = FeedCursor(A, 10)
    assert cur.on_watermark(None, 0) == []  # being restored
    assert cur.on_watermark(A, 12) == [Fetch(10, 12)]
    cur.delivered(11, 2)
    assert cur.on_watermark(A, 12) == []
    assert cur.on_watermark(C, 30) == [Reset(C, 30)]  # B was missed entirely
    assert (cur.board, cur.last) == (C, 30)


# -- acknowledgements -----------------------------------------------------------------


def test_current_board_confirms_by_its_own_watermark() -> None:
    acks: Acks[str] = Acks(A, 10)
    assert acks.accepted("early", acc(9, A)) is Outcome.CONFIRMED  # announced before the reply
    assert acks.accepted("p", acc(11, A)) is Outcome.WAIT
    assert acks.accepted("q", acc(13, A)) is Outcome.WAIT
    assert acks.committed_upto(A, 12) == ["p"]
    assert acks.committed_upto(B, 20) == []  # another board's numbers say nothing
    assert acks.committed_upto(A, 13) == ["q"]
    assert len(acks) == 0


def test_reset_never_confirms_an_old_board_by_the_new_boards_seqs() -> None:
    """The reported defect: restored at head 2720, the new board's 2721 was committed
    before the feed noticed; the old board's 2721 must not be confirmed by it."""
    acks: Acks[str] = Acks(A, 2720)
    lost = acc(2721, A, "victim")
    assert acks.accepted("victim", lost) is Outcome.WAIT
    confirmed, check = acks.reset(B, 2725)
    assert confirmed == [] and check == ["victim"]
    other = LogRow(2721, B.epoch, 5, 3, "someone-else")
    assert acks.checked("victim", other) is Outcome.LOST
    # Had the log held that very placement (committed before the restore), it is durable.
    acks.accepted("kept", acc(2720, A))
    assert acks.checked("kept", row(acc(2720, A))) is Outcome.CONFIRMED


def test_a_reply_that_arrives_after_the_reset_is_checked_not_judged() -> None:
    acks: Acks[str] = Acks(B, 50)
    assert acks.accepted("late", acc(40, A)) is Outcome.CHECK
    assert acks.pending_checks() == ["late"]
    assert acks.checked("late", None) is Outcome.LOST


def test_a_reply_from_a_board_the_feed_has_not_seen_yet_waits_for_it() -> None:
    acks: Acks[str] = Acks(A, 10)
    assert acks.accepted("new", acc(12, B)) is Outcome.WAIT
    assert acks.accepted("old", acc(11, A)) is Outcome.WAIT
    assert acks.committed_upto(A, 12) == ["old"]  # B's 12 is not A's 12
    assert acks.reset(B, 12) == (["new"], [])


def test_forgotten_waiters_are_not_answered() -> None:
    acks: Acks[str] = Acks(A, 0)
    acks.accepted("gone", acc(1, A))
    acks.forget("gone")
    assert acks.committed_upto(A, 5) == []
    assert acks.reset(B, 5) == ([], [])


def test_log_row_must_be_that_very_placement() -> None:
    p = acc(7, A, "me")
    acks: Acks[str] = Acks(B, 9)
    for other in (
        LogRow(7, B.epoch, p.index, p.color, "me"),  # same content, other board
        LogRow(7, A.epoch, p.index + 1, p.color, "me"),
        LogRow(7, A.epoch, p.index, (p.color + 1) % 16, "me"),
        LogRow(7, A.epoch, p.index, p.color, "you"),
        None,
    ):
        acks.accepted("k", p)
        assert acks.checked("k", other) is Outcome.LOST


# -- persister decisions --------------------------------------------------------------


def test_continuing_counts_the_run_that_follows_the_log() -> None:
    assert continuing(10, [11, 12, 13]) == 3
    assert continuing(10, [11, 12, 20]) == 2
    assert continuing(10, [1, 2]) == 0  # restarted empty, refilled from 1
    assert continuing(10, []) == 0


def test_restore_reasons() -> None:
    assert restore_reason(A, A, 10, 10, requested=False) is None
    assert restore_reason(A, A, 12, 10, requested=False) is None  # accepted, not committed
    assert restore_reason(A, A, 10, 10, requested=True) is not None
    assert restore_reason(None, A, 0, 10, requested=False) is not None
    assert restore_reason(B, A, 10, 10, requested=False) is not None
    assert restore_reason(A, A, 5, 10, requested=False) is not None  # rewound


# -- the whole world, in memory -------------------------------------------------------


@dataclass
class World:
    """Redis, the persister and PostgreSQL, reduced to what decides acknowledgements."""

    uid: str = "w"
    epoch: int = 1  # the persister's (and PostgreSQL's) epoch
    redis_board: BoardId | None = None
    redis_seq: int = 0
    redis_committed: int = 0
    stream: dict[int, Accepted] = field(default_factory=dict)  # seq -> entry, this lifetime
    committed: int = 0
    log: dict[int, LogRow] = field(default_factory=dict)
    inbox: list[tuple[int, int, int]] = field(default_factory=list)  # announcements

    def __post_init__(self) -> None:
        self.redis_board = BoardId(self.uid, self.epoch)

    def accept(self, pid: int) -> Accepted | None:
        """The placement script; ``None`` if Redis holds no board."""
        if self.redis_board is None:
            return None
        self.redis_seq += 1
        p = Accepted(self.redis_seq, self.redis_board, pid % 1000, pid % 16, f"user{pid}")
        self.stream[p.seq] = p
        return p

    def commit(self, n: int) -> None:
        """The persister copies up to ``n`` entries that continue the log, and announces."""
        if self.redis_board is None or self.redis_board.epoch != self.epoch:
            return
        seqs = sorted(s for s in self.stream if s > self.committed)[:n]
        k = continuing(self.committed, seqs)
        if k == 0:
            return
        first = self.committed + 1
        for seq in seqs[:k]:
            p = self.stream[seq]
            self.log[seq] = LogRow(seq, self.epoch, p.index, p.color, p.user_id)
        self.committed += k
        self.redis_committed = self.committed
        self.inbox.append((self.epoch, first, k))

    def kill_redis(self) -> None:
        self.redis_board, self.redis_seq, self.redis_committed = None, 0, 0
        self.stream.clear()

    def restore(self) -> None:
        """Drain what Redis still holds, then a new board at the committed head."""
        self.commit(10**9)
        self.epoch += 1
        self.redis_board = BoardId(self.uid, self.epoch)
        self.redis_seq = self.redis_committed = self.committed
        self.stream = {s: p for s, p in self.stream.items() if s <= self.committed}
        self.inbox.append((self.epoch, self.committed + 1, 0))


class AckWorld(RuleBasedStateMachine):
    """One API process (its feed cursor and acknowledgements) against a :class:`World`."""

    def __init__(self) -> None:
        super().__init__()
        self.world = World()
        self.cursor = FeedCursor(BoardId(self.world.uid, 1), 0)
        self.acks: Acks[int] = Acks(self.cursor.board, 0)
        self.pid = 0
        self.replies: list[tuple[int, Accepted]] = []  # Lua replies on their way back
        self.answers: dict[int, Outcome] = {}
        self.accepted: dict[int, Accepted] = {}  # pid -> what Redis answered
        self.abandoned: set[int] = set()  # replies lost: answered 503 'unconfirmed'

    # -- placements --------------------------------------------------------------

    @rule()
    def place(self) -> None:
        self.pid += 1
        p = self.world.accept(self.pid)
        if p is not None:
            self.replies.append((self.pid, p))

    @precondition(lambda self: self.replies)
    @rule(i=st.integers(0, 50))
    def reply_arrives(self, i: int) -> None:
        pid, p = self.replies.pop(i % len(self.replies))
        self.accepted[pid] = p
        self._answer(pid, self.acks.accepted(pid, p))

    @precondition(lambda self: self.replies)
    @rule(i=st.integers(0, 50), retried=st.booleans())
    def reply_lost(self, i: int, retried: bool) -> None:
        """The reply never comes; a client library that retried would place again."""
        pid, _ = self.replies.pop(i % len(self.replies))
        self.abandoned.add(pid)
        if retried:
            self.pid += 1
            again = self.world.accept(pid)  # same user, pixel and colour: a second placement
            if again is not None:
                self.replies.append((self.pid, again))

    # -- the persister and Redis -------------------------------------------------

    @rule(n=st.integers(1, 4))
    def persister_commits(self, n: int) -> None:
        self.world.commit(n)

    @rule()
    def redis_dies(self) -> None:
        self.world.kill_redis()

    @rule()
    def persister_restores(self) -> None:
        self.world.restore()

    # -- the feed ----------------------------------------------------------------

    @precondition(lambda self: self.world.inbox)
    @rule(lose=st.booleans())
    def announcement(self, lose: bool) -> None:
        epoch, first, count = self.world.inbox.pop(0)
        if not lose:
            self._feed(self.cursor.on_announcement(epoch, first, count), first, count)

    @rule()
    def watermark_poll(self) -> None:
        w = self.world
        self._feed(self.cursor.on_watermark(w.redis_board, w.redis_committed), 0, 0)

    @rule()
    def log_lookup(self) -> None:
        for key in self.acks.pending_checks():
            p = self.acks.placement(key)
            assert p is not None
            self._answer(key, self.acks.checked(key, self.world.log.get(p.seq)))

    def _feed(self, steps: list[FeedStep], first: int, count: int) -> None:
        for step in steps:
            if isinstance(step, Fetch):
                self._delivered(step.after + 1, step.upto - step.after)
            elif isinstance(step, Take):
                self._delivered(first + step.skip, count - step.skip)
            elif isinstance(step, CatchUp):
                self.watermark_poll()
            elif isinstance(step, Reset):
                confirmed, _check = self.acks.reset(step.board, step.head)
                for key in confirmed:
                    self._answer(key, Outcome.CONFIRMED)

    def _delivered(self, first: int, count: int) -> None:
        if count <= 0 or first > self.cursor.last + 1:
            return
        self.cursor.delivered(first, count)
        for key in self.acks.committed_upto(self.cursor.board, self.cursor.last):
            self._answer(key, Outcome.CONFIRMED)

    def _answer(self, pid: int, outcome: Outcome) -> None:
        if outcome in (Outcome.CONFIRMED, Outcome.LOST):
            assert pid not in self.answers, f"placement {pid} answered twice"
            self.answers[pid] = outcome

    # -- what must hold ----------------------------------------------------------

    @invariant()
    def confirmed_means_in_the_log(self) -> None:
        for pid, outcome in self.answers.items():
            p = self.accepted[pid]
            logged = self.world.log.get(p.seq)
            if outcome is Outcome.CONFIRMED:
                assert logged == LogRow(p.seq, p.board.epoch, p.index, p.color, p.user_id), (
                    f"placement {pid} confirmed as seq {p.seq} of {p.board}, "
                    f"but the log holds {logged}"
                )

    def teardown(self) -> None:
        """Settle: replies in, Redis restored if needed, everything committed and
        announced, the feed caught up, the log consulted. Then every placement the
        log holds is confirmed, and every other one is answered lost."""
        w = self.world
        while self.replies:
            self.reply_arrives(0)
        if w.redis_board is None or w.redis_board.epoch != w.epoch:
            w.restore()
        w.commit(10**9)
        w.inbox.clear()  # announcements lost: the watermark must suffice
        self.watermark_poll()
        self.log_lookup()
        self.confirmed_means_in_the_log()
        for pid, p in self.accepted.items():
            logged = w.log.get(p.seq)
            in_log = logged == LogRow(p.seq, p.board.epoch, p.index, p.color, p.user_id)
            want = Outcome.CONFIRMED if in_log else Outcome.LOST
            assert self.answers.get(pid) is want, (
                f"placement {pid} (seq {p.seq} of {p.board}, in log: {in_log}) "
                f"answered {self.answers.get(pid)}"
            )


AckWorld.TestCase.settings = settings(max_examples=400, stateful_step_count=60, deadline=None)
test_ack_world = AckWorld.TestCase
