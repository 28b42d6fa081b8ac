"""The hub's decisions on their own: admission, batching, replay boundaries (no I/O)."""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from openplace.core.wire import RECORD_SIZE, encode_record
from openplace.realtime import fanout_core as core

# -- admission ------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 3])
def test_admission_limits_each_address(limit: int) -> None:
    slots = core.Admission(limit)
    assert all(slots.admit("a") for _ in range(limit))
    assert not slots.admit("a")
    assert slots.admit("b")
    slots.release("a")
    assert slots.admit("a") and not slots.admit("a")


def test_admission_forgets_an_address_with_no_slot() -> None:
    slots = core.Admission(2)
    slots.admit("a")
    slots.admit("a")
    slots.release("a")
    assert slots.counts == {"a": 1}
    slots.release("a")
    assert slots.counts == {}
    slots.release("a")  # one release too many: nothing held, nothing negative
    assert slots.counts == {}


def test_zero_limit_admits_nobody() -> None:
    assert not core.Admission(0).admit("a")


@given(st.lists(st.tuples(st.booleans(), st.sampled_from("abc")), max_size=60), st.integers(0, 4))
def test_admission_never_exceeds_the_limit(ops: list[tuple[bool, str]], limit: int) -> None:
    slots = core.Admission(limit)
    held: dict[str, int] = {}
    for take, ip in ops:
        if take:
            ok = slots.admit(ip)
            assert ok == (held.get(ip, 0) < limit)
            held[ip] = held.get(ip, 0) + ok
        elif held.get(ip, 0):  # the hub releases only what it admitted
            slots.release(ip)
            held[ip] -= 1
        assert slots.counts == {k: v for k, v in held.items() if v}


# -- batching -------------------------------------------------------------------------


def test_batch_delay_keeps_broadcasting_to_its_share_up_to_the_cap() -> None:
    assert core.batch_delay(0, 10e-6, 0.5, 1.0) == 0
    # 10,000 clients at 10 µs a send: a 0.1 s flush; half the time means 0.1 s between.
    assert core.batch_delay(10_000, 10e-6, 0.5, 1.0) == pytest.approx(0.1)
    # A flush is 80% of each cycle (the flush, then the gathering) at share 0.8.
    delay = core.batch_delay(10_000, 10e-6, 0.8, 1.0)
    assert 0.1 / (0.1 + delay) == pytest.approx(0.8)
    # Sends twice as slow (a busier machine): batches twice as long, not a backlog.
    assert core.batch_delay(10_000, 20e-6, 0.5, 1.0) == pytest.approx(0.2)
    assert core.batch_delay(10_000, 20e-6, 1.0, 1.0) == 0  # share 1: back to back
    assert core.batch_delay(1_000_000, 10e-6, 0.5, 1.0) == 1.0  # capped


def test_send_cost_follows_what_flushes_to_many_clients_measure() -> None:
    cost = core.SendCost(initial=10e-6, weight=0.5, min_sends=64)
    cost.observe(1.0, 10)  # ten sends: overhead, not the cost of a send
    assert cost.seconds == 10e-6
    for _ in range(30):
        cost.observe(0.3, 10_000)  # 30 µs a send
    assert cost.seconds == pytest.approx(30e-6, rel=1e-3)
    cost.observe(0.1, 10_000)  # one fast flush moves it part of the way
    assert 10e-6 < cost.seconds < 30e-6


def test_short_delays_flush_without_a_timer() -> None:
    assert core.flush_now(0) and core.flush_now(core.IMMEDIATE)
    assert not core.flush_now(0.002)
    assert core.flush_now(core.batch_delay(100, 10e-6, 0.5, 1.0))  # 100 clients: 1 ms


def records(first: int, n: int) -> bytes:
    return b"".join(encode_record(i, i % 16) for i in range(first, first + n))


def test_keep_the_next_run_whole() -> None:
    assert core.keep(10, 11) == core.Keep(0, 11)


def test_keep_only_the_new_part_of_an_overlapping_run() -> None:
    assert core.keep(10, 8) == core.Keep(3, 11)  # 8, 9, 10 held already
    assert core.keep(10, 1) == core.Keep(10, 11)


def test_a_gap_in_the_feed_resyncs_to_before_the_run() -> None:
    assert core.keep(10, 15) == core.Keep(0, 15, gap=14)


def test_one_flush_sends_what_was_added_then_nothing() -> None:
    batch = core.Batch(5)
    batch.add(records(6, 2))
    batch.add(records(8, 3))
    assert batch.take() == (6, records(6, 5))
    assert batch.sent == 10
    assert batch.take() == (11, b"")  # nothing pending: nothing sent
    assert batch.sent == 10


def test_reset_drops_pending() -> None:
    batch = core.Batch(5)
    batch.add(records(6, 2))
    batch.reset(40)
    assert batch.take() == (41, b"") and batch.sent == 40


@given(st.integers(0, 50), st.lists(st.tuples(st.integers(-5, 5), st.integers(0, 6)), max_size=30))
def test_published_runs_become_one_gapless_stream_or_a_resync(
    head: int, runs: list[tuple[int, int]]
) -> None:
    """Whatever the feed publishes (overlaps, repeats, gaps), kept seqs never repeat."""
    batch = core.Batch(head)
    for shift, n in runs:
        first = head + 1 + shift
        kept = core.keep(head, first)
        assert kept.first_seq == max(first, head + 1)
        new = max(0, n - kept.skip)
        if kept.gap is not None:
            assert kept.gap == first - 1 > head
            batch.take()
            batch.reset(kept.gap)
            head = kept.gap
        if new:
            before = batch.sent
            batch.add(records(kept.first_seq, new))
            head = kept.first_seq + new - 1
            got_first, got = batch.take()
            assert got_first == before + 1
            assert len(got) // RECORD_SIZE == new
            assert batch.sent == head


# -- replay on attach -----------------------------------------------------------------


def test_no_since_means_only_new_placements() -> None:
    assert core.start(None, None, "b", 100, 10) == core.Start(100, resync=False)


def test_since_within_the_limit_replays() -> None:
    assert core.start(90, "b", "b", 100, 10) == core.Start(90, resync=False)
    assert core.start(90, None, "b", 100, 10) == core.Start(90, resync=False)


def test_since_beyond_the_limit_resyncs() -> None:
    assert core.start(89, "b", "b", 100, 10) == core.Start(100, resync=True)


def test_another_board_resyncs() -> None:
    assert core.start(100, "old", "b", 100, 10) == core.Start(100, resync=True)


def test_ahead_without_a_board_resyncs() -> None:
    assert core.start(105, None, "b", 100, 10) == core.Start(100, resync=True)


def test_ahead_with_the_board_starts_at_the_head() -> None:
    assert core.start(105, "b", "b", 100, 10) == core.Start(100, resync=False)


def test_replay_from_the_ring() -> None:
    assert core.next_replay(90, 100, 80) == core.FromRing(90, 100)
    assert core.next_replay(79, 100, 80) == core.FromRing(79, 100)  # 80 is held


def test_replay_older_than_the_ring_comes_from_the_feed() -> None:
    assert core.next_replay(50, 100, 80) == core.FromFeed(50, 79)


def test_replay_from_the_feed_stops_at_what_was_broadcast() -> None:
    # The ring starts at 16 but only 10 was broadcast: 11.. come with the next flush.
    assert core.next_replay(8, 10, 16) == core.FromFeed(8, 10)
    assert core.next_replay(10, 10, 16) == core.FromRing(10, 10)


def test_nothing_to_replay() -> None:
    assert core.next_replay(100, 100, 80) == core.FromRing(100, 100)
    assert core.next_replay(3, 3, 80) == core.FromRing(3, 3)  # ring newer, nothing missed


def replay(
    since: int | None, board: str | None, sent: int, ring_first: int, limit: int, feed_oldest: int
) -> tuple[bool, list[tuple[int, int]]]:
    """Drive the decisions as the hub does: whether resynced, and the ranges sent."""
    begin = core.start(since, board, "b", sent, limit)
    resynced, after, sent_ranges = begin.resync, begin.after, []
    for _ in range(10):
        step = core.next_replay(after, sent, ring_first)
        if isinstance(step, core.FromFeed):
            if step.after + 1 < feed_oldest:  # the feed no longer holds them
                resynced, after = True, sent
                continue
            sent_ranges.append((step.after, step.upto))
            after = step.upto
            continue
        if step.upto > step.after:
            sent_ranges.append((step.after, step.upto))
        return resynced, sent_ranges
    raise AssertionError("the replay did not end")


@given(
    st.one_of(st.none(), st.integers(0, 300)),
    st.sampled_from([None, "b", "old"]),
    st.integers(0, 200),
    st.integers(0, 250),
    st.integers(1, 150),
    st.integers(1, 250),
    st.integers(0, 100),
)
# More pending than the ring holds: the ring starts after sent+1 (a big burst).
@example(since=5, board="b", sent=10, ring_back=2, limit=100, oldest=1, pending=4)
def test_replay_never_skips_or_repeats_a_seq(
    since: int | None,
    board: str | None,
    sent: int,
    ring_back: int,
    limit: int,
    oldest: int,
    pending: int,
) -> None:
    """The replay ends at ``sent``: the next flush sends ``sent+1 ..``, the ring's head.

    The ring holds its newest ``ring_back`` seqs; ``pending`` of them (after ``sent``)
    await the next flush, so the ring may start after ``sent + 1``.
    """
    ring_first = max(1, sent + pending + 1 - ring_back)
    resynced, ranges = replay(since, board, sent, ring_first, limit, oldest)
    seqs = [s for after, upto in ranges for s in range(after + 1, upto + 1)]
    # Each piece starts where the last ended and the last ends at the head: the live
    # frames continue from there, with no seq skipped or sent twice.
    assert all(after < upto for after, upto in ranges)
    assert all(a[1] == b[0] for a, b in pairwise(ranges))
    assert not ranges or ranges[-1][1] == sent
    if resynced:  # a reloaded board is at the head: nothing older is replayed
        assert not seqs
    elif since is not None and since <= sent:
        assert seqs == list(range(since + 1, sent + 1))  # exactly what the client missed
    else:
        assert not seqs
