"""The fan-out hub: every committed placement to every connected client, once encoded.

The hub keeps a :class:`~openplace.core.history.History` of recent placements, so a
client that reconnects with ``since=N`` is replayed what it missed from memory, and a
set of subscribers. New placements are gathered for a short, load-adaptive interval,
then one batch frame is encoded (payload and websocket framing) and the same bytes
object goes to every subscriber. The interval grows with the number of subscribers so
that the sends per second stay within budget: more clients, bigger batches, the same
work. Each subscriber's buffer is bounded: a client that reads too slowly is
disconnected (it resumes with ``since``) rather than buffered without bound or allowed
to slow the others down.

The decisions (admission per address, how long to gather and what one flush sends,
where a replay starts and whether each piece comes from memory or the feed) are made
by :mod:`openplace.realtime.fanout_core`, with no I/O; the hub does the I/O around
them: timers, awaiting the feed, writing to the clients' sinks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from openplace.core.history import History, TooOld
from openplace.core.wire import RECORD_SIZE, control, split_frames
from openplace.observe import metrics
from openplace.realtime import fanout_core as core
from openplace.realtime.transport import encode
from openplace.storage.base import Feed

log = logging.getLogger(__name__)

Message = bytes | str


class Sink(Protocol):
    """What the hub needs of a client.

    In production a :class:`~openplace.realtime.transport.TransportSubscriber`, whichever
    server accepted the connection (``openplace serve``'s uvicorn with
    :class:`~openplace.realtime.transport.WSProtocol`, or a distributed realtime
    process); the tests use their own.
    """

    closed: bool
    close_reason: str

    def offer(self, message: Message, *, bounded: bool = True) -> None:
        """Send ``message`` to this client alone."""

    def write(self, frame: bytes, message: Message) -> None:
        """Send a broadcast: ``frame`` is ``message`` already websocket-encoded."""

    def close(self, reason: str, code: int = 1001) -> None: ...


class Hub:
    """Subscribers, recent history and the broadcast of new placements."""

    def __init__(
        self,
        feed: Feed,
        *,
        replay_limit: int,
        send_buffer: int,
        max_per_ip: int,
        send_share: float = 0.5,
        max_batch_delay: float = 1.0,
    ) -> None:
        self.feed = feed
        self.replay_limit = replay_limit
        self.send_buffer = send_buffer
        self.max_per_ip = max_per_ip
        self.admission = core.Admission(max_per_ip)
        self.history = History(replay_limit)
        self.subscribers: set[Sink] = set()
        self.send_share = send_share
        self.max_batch_delay = max_batch_delay
        self.send_cost = core.SendCost()
        self.batch = core.Batch()  # what is broadcast, what waits for the next flush
        self._flush: asyncio.TimerHandle | asyncio.Handle | None = None
        self._per_ip = self.admission.counts  # address -> connections held
        self._unlisten: Callable[[], None] | None = None
        self.online: Callable[[], int] = lambda: len(self.subscribers)
        self.board_id = ""
        # Moderation's public policy ({"frozen", "protected"}) and its version.
        self.policy: dict[str, Any] = {"frozen": False, "protected": []}
        self.policy_version = 0
        # The newest committed seq this process has heard of from outside the feed's
        # deliveries (a distributed realtime process reads Redis's watermark when
        # scraped): what it has not broadcast yet is the fan-out lag.
        self.watermark = 0
        metrics.watch_hub(lambda: len(self.subscribers), lambda: self.sent, self.lag)

    async def start(self) -> None:
        """Fill the history from the feed and start listening to it."""
        head = await self.feed.head()
        first = max(0, head - self.replay_limit)
        try:
            records = await self.feed.records(first, head)
        except TooOld:
            records, first = b"", head
        self.history.reset(first)
        if records:
            self.history.append(first + 1, records)
        self.batch.reset(self.history.head)
        self.board_id = self.feed.board_id
        self._unlisten = self.feed.listen(self.publish, self.reset)

    def following(self) -> bool:
        """Started and listening to the feed."""
        return self._unlisten is not None

    def lag(self) -> int:
        """Committed placements not yet broadcast (as far as this process knows)."""
        return max(0, max(self.watermark, self.history.head) - self.sent)

    def stop(self) -> None:
        if self._unlisten is not None:
            self._unlisten()
            self._unlisten = None
        for sub in list(self.subscribers):
            sub.close("server shutting down")

    # -- broadcast -----------------------------------------------------------------

    @property
    def sent(self) -> int:
        """Seq of the last placement broadcast (history may hold more)."""
        return self.batch.sent

    def batch_delay(self) -> float:
        """How long to gather placements: broadcasting takes ``send_share`` of the time."""
        return core.batch_delay(len(self.subscribers), self.send_cost.seconds,
                                self.send_share, self.max_batch_delay)  # fmt: skip

    def publish(self, first_seq: int, records: bytes) -> None:
        """Add placements ``first_seq ..`` and schedule their broadcast."""
        kept = core.keep(self.history.head, first_seq)
        if kept.skip:
            records = records[kept.skip * RECORD_SIZE :]
            if not records:
                return
        if kept.gap is not None:
            log.error("placement feed skipped %d..%d; resyncing clients",
                      self.history.head + 1, kept.gap)  # fmt: skip
            self.resync(kept.gap)
        self.history.append(kept.first_seq, records)
        self.batch.add(records)
        if self._flush is None:
            loop = asyncio.get_running_loop()
            delay = self.batch_delay()
            self._flush = (loop.call_soon(self.flush) if core.flush_now(delay)
                           else loop.call_later(delay, self.flush))  # fmt: skip

    def flush(self) -> None:
        """Broadcast everything published since the last flush: encoded once for all."""
        self._flush = None
        first, records = self.batch.take()
        for payload in split_frames(first, records):
            self._broadcast(payload)

    def _broadcast(self, message: Message) -> int:
        """Write ``message`` to every subscriber; returns to how many."""
        frame = encode(message)
        subscribers = list(self.subscribers)
        began = time.perf_counter()
        for sub in subscribers:
            sub.write(frame, message)
            if sub.closed:
                self.subscribers.discard(sub)
                if sub.close_reason == "too slow":
                    metrics.SLOW_DROPPED.inc()
        n = len(subscribers)
        # Wall time, not CPU time: a process that shares its core writes more slowly,
        # and its batches must grow for that too.
        self.send_cost.observe(time.perf_counter() - began, n)
        metrics.FRAMES_SENT.inc(n)
        metrics.BYTES_SENT.inc(n * len(frame))
        return n

    def reset(self, board_id: str, head: int) -> None:
        """The board was replaced (e.g. restored): every client reloads it."""
        self.board_id = board_id
        self.resync(head)

    def resync(self, head: int) -> None:
        """Forget history and tell every client to reload the board."""
        if self._flush is not None:  # what is pending was published before the reset
            self._flush.cancel()
            self.flush()
        self.history.reset(head)
        self.batch.reset(head)
        metrics.RESYNCS.inc(self._broadcast(control("resync", head=head, board=self.board_id)))

    def broadcast_online(self) -> None:
        self._broadcast(control("online", count=self.online()))

    def set_policy(self, version: int, public: dict[str, Any]) -> None:
        """A newer policy: every client is told (``{"type": "policy", ...}``)."""
        if version <= self.policy_version:
            return
        self.policy_version, self.policy = version, public
        self._broadcast(control("policy", **public))

    # -- clients -------------------------------------------------------------------

    def admit(self, ip: str) -> bool:
        """Reserve a connection slot for ``ip``; False if it has too many."""
        return self.admission.admit(ip)

    def release(self, ip: str) -> None:
        self.admission.release(ip)

    async def attach(self, sub: Sink, since: int | None, board: str | None = None) -> None:
        """Queue ``hello``, then everything after ``since``, then subscribe to live frames.

        With ``since`` ``None`` the client only wants new placements. The client is
        told to resync (reload the board) if its ``board`` id is not the current one,
        if it is further behind than the replay limit, or if ``since`` is ahead of this
        server without a matching ``board`` (with one, it is a board fetched from a
        server slightly ahead of this one: frames it already has are skipped by it).
        """
        if board is not None and board != self.board_id:
            # The client may have fetched a board restored after this process last
            # looked: catch up first, so it is never sent back to an older board.
            await self.feed.refresh()
        history = self.history
        sub.offer(control("hello", head=self.sent, board=self.board_id))
        begin = core.start(since, board, self.board_id, self.sent, self.replay_limit)
        if begin.resync:
            metrics.RESYNCS.inc()
            sub.offer(control("resync", head=self.sent, board=self.board_id))
        after = begin.after
        while True:
            # Up to what was broadcast; the pending rest comes with the next flush.
            step = core.next_replay(after, self.sent, history.first)
            if isinstance(step, core.FromFeed):
                try:
                    older = await self.feed.records(step.after, step.upto)
                except TooOld:
                    metrics.RESYNCS.inc()
                    sub.offer(control("resync", head=self.sent, board=self.board_id))
                    after = self.sent
                    continue
                for frame in split_frames(step.after + 1, older):
                    _count_replay(frame)
                    sub.offer(frame, bounded=False)
                after = step.upto
                continue
            records = history.records(step.after, step.upto)  # no await until add(): no race
            for frame in split_frames(step.after + 1, records):
                _count_replay(frame)
                sub.offer(frame, bounded=False)
            if sub.closed:  # went away while we fetched its history
                return
            self.subscribers.add(sub)
            sub.offer(control("online", count=self.online()))
            if self.policy["frozen"] or self.policy["protected"]:
                sub.offer(control("policy", **self.policy))
            return

    def detach(self, sub: Sink) -> None:
        self.subscribers.discard(sub)


def _count_replay(payload: bytes) -> None:
    metrics.FRAMES_SENT.inc()
    metrics.BYTES_SENT.inc(len(payload) + 10)  # and its websocket header, at most 10 bytes


async def run_online_ticker(hub: Hub, interval: float) -> None:
    """Tell clients the online count whenever it changes (checked every ``interval``)."""
    last = -1
    while True:
        await asyncio.sleep(interval)
        n = hub.online()
        if n != last:
            last = n
            hub.broadcast_online()
