"""The fan-out hub's decisions, with no I/O: admission, batching, replay boundaries.

Facts go in (an address asking for a slot, the number of clients, a published run of
placements, a client's ``since`` and ``board`` against the server's board id, head and
history ring), decisions come out (admit or refuse, how long to gather, what to keep
of a run, where a replay starts and where each of its pieces comes from).
:class:`~openplace.realtime.hub.Hub` does the I/O around them (timers, awaiting the
feed, writing to sinks); ``tests/test_hub_core.py`` drives them directly.
"""

from __future__ import annotations

from dataclasses import dataclass

from openplace.core.wire import RECORD_SIZE

# A delay at or below this is not worth a timer: flush on the next loop iteration.
IMMEDIATE = 0.001

# -- admission ------------------------------------------------------------------------


class Admission:
    """Connection slots per address: at most ``limit`` each."""

    __slots__ = ("counts", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.counts: dict[str, int] = {}  # address -> slots held (absent: none)

    def admit(self, ip: str) -> bool:
        """Reserve a slot for ``ip``; False if it holds ``limit`` already."""
        n = self.counts.get(ip, 0)
        if n >= self.limit:
            return False
        self.counts[ip] = n + 1
        return True

    def release(self, ip: str) -> None:
        """Give back a slot of ``ip`` (an address holding none is left alone)."""
        n = self.counts.get(ip, 0) - 1
        if n <= 0:
            self.counts.pop(ip, None)
        else:
            self.counts[ip] = n


# -- batching -------------------------------------------------------------------------


class SendCost:
    """The measured wall time of one broadcast send: an exponentially weighted mean.

    A flush to few clients is mostly fixed overhead, so only flushes to at least
    ``min_sends`` clients are counted. ``initial`` stands until the first of those.
    """

    __slots__ = ("min_sends", "seconds", "weight")

    def __init__(self, initial: float = 10e-6, weight: float = 0.2, min_sends: int = 64) -> None:
        self.seconds = initial
        self.weight = weight
        self.min_sends = min_sends

    def observe(self, elapsed: float, sends: int) -> None:
        """A broadcast wrote ``sends`` frames in ``elapsed`` seconds."""
        if sends >= self.min_sends:
            self.seconds += self.weight * (elapsed / sends - self.seconds)


def batch_delay(clients: int, send_seconds: float, share: float, max_delay: float) -> float:
    """How long to gather placements so that broadcasting takes ``share`` of the time.

    One flush to ``clients`` takes ``F = clients * send_seconds``, and the next gathering
    starts after it: a cycle is the delay plus ``F``. A delay of ``F * (1 - share) /
    share`` makes the flushes ``share`` of each cycle, so the writes never fall behind
    and queue up, whatever the number of clients or the cost of a send on this machine
    (at ``share`` 1, flushes run back to back). Capped at ``max_delay``.
    """
    return min(max_delay, clients * send_seconds * (1 - share) / share)


def flush_now(delay: float) -> bool:
    """Whether a gathering ``delay`` is short enough to flush without a timer."""
    return delay <= IMMEDIATE


@dataclass(frozen=True, slots=True)
class Keep:
    """Of a published run, keep the records from ``skip`` on (seq ``first_seq`` on).

    ``gap`` is the seq the clients must resync to first (the feed skipped seqs), or
    ``None``. ``skip`` may cover the whole run: then there is nothing new.
    """

    skip: int
    first_seq: int
    gap: int | None = None


def keep(head: int, first_seq: int) -> Keep:
    """What to keep of a run starting at ``first_seq`` when history ends at ``head``."""
    if first_seq <= head:  # already have some: keep only the new part
        return Keep(head + 1 - first_seq, head + 1)
    if first_seq > head + 1:  # the feed skipped head+1 .. first_seq-1
        return Keep(0, first_seq, gap=first_seq - 1)
    return Keep(0, first_seq)


class Batch:
    """Placements published but not yet broadcast, after :attr:`sent`."""

    __slots__ = ("pending", "sent")

    def __init__(self, sent: int = 0) -> None:
        self.sent = sent  # seq of the last placement broadcast
        self.pending = bytearray()  # records sent+1 .., not yet broadcast

    def add(self, records: bytes | memoryview) -> None:
        self.pending += records

    def take(self) -> tuple[int, bytes]:
        """``(first_seq, records)`` of one flush, now counted as sent (may be empty)."""
        records, self.pending = bytes(self.pending), bytearray()
        first = self.sent + 1
        self.sent += len(records) // RECORD_SIZE
        return first, records

    def reset(self, head: int) -> None:
        """Drop what is pending: the next placement broadcast is ``head + 1``."""
        self.sent = head
        self.pending = bytearray()


# -- replay on attach -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Start:
    """Where a client's replay starts: after seq ``after``, with a resync first or not."""

    after: int
    resync: bool


def start(since: int | None, board: str | None, board_id: str, sent: int, limit: int) -> Start:
    """Where to start replaying to a client attaching with ``since`` and ``board``.

    ``sent`` is the server's head (the last seq broadcast). A resync (reload the
    board, then placements after ``sent``) if ``board`` is not ``board_id``, if
    ``since`` is ahead of ``sent`` without a ``board``, or if it is further behind
    than ``limit``. Ahead with the matching ``board`` (a board fetched from a server
    slightly ahead): from ``sent`` on, the client skips what it already has.
    """
    after = sent if since is None else since
    stale = board is not None and board != board_id
    ahead = after > sent and board is None
    if stale or ahead or sent - after > limit:
        return Start(sent, resync=True)
    return Start(min(after, sent), resync=False)


@dataclass(frozen=True, slots=True)
class FromRing:
    """Send ``after+1 .. upto`` from the history ring, then subscribe the client."""

    after: int
    upto: int


@dataclass(frozen=True, slots=True)
class FromFeed:
    """Read ``after+1 .. upto`` from the feed (older than the ring), send it, ask again.

    If the feed no longer holds them: resync the client to the head and ask again.
    """

    after: int
    upto: int


def next_replay(after: int, sent: int, ring_first: int) -> FromRing | FromFeed:
    """The next piece of a replay that has reached ``after``.

    ``sent`` is the head broadcast so far (what is pending comes with the next
    flush), ``ring_first`` the oldest seq the history ring holds. The ring may start
    after ``sent + 1`` (more was published since the last flush than it holds): the
    feed is read up to ``sent`` only, the next flush sends the rest.
    """
    if after < sent and after + 1 < ring_first:
        return FromFeed(after, min(ring_first - 1, sent))
    return FromRing(after, max(after, sent))
