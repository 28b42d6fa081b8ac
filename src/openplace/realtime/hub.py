"""The fan-out hub: every committed placement to every connected client, once encoded.

The hub keeps a :class:`~openplace.core.history.History` of recent placements, so a
client that reconnects with ``since=N`` is replayed what it missed from memory, and a
set of :class:`Subscriber` s. Publishing encodes one frame per run of placements and
hands the same bytes object to every subscriber. Each subscriber has a bounded send
buffer: a client that reads too slowly is disconnected (it resumes with ``since``)
rather than buffered without bound or allowed to slow the others down.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable

from openplace.core.history import History, TooOld
from openplace.core.wire import RECORD_SIZE, control, split_frames
from openplace.storage.base import Feed

log = logging.getLogger(__name__)

Message = bytes | str
Send = Callable[[Message], Awaitable[None]]

CLOSE_TOO_SLOW = 4008  # client fell too far behind; reconnect with since=<last seq>


class Subscriber:
    """One client's outgoing queue, drained by :meth:`run`."""

    __slots__ = ("_event", "_queue", "_send", "buffered", "close_reason", "closed", "done", "limit")

    def __init__(self, send: Send, limit: int) -> None:
        self._send = send
        self._queue: deque[Message] = deque()
        self._event = asyncio.Event()
        self.limit = limit
        self.buffered = 0
        self.closed = False
        self.close_reason = ""
        self.done = asyncio.Event()  # set when closed: the connection should end

    def offer(self, message: Message, *, bounded: bool = True) -> None:
        """Queue a message; over the limit, mark the subscriber too slow.

        Replay is offered with ``bounded=False``: it is bounded by the replay limit
        already, and a client far behind must be able to catch up in one go.
        """
        if self.closed:
            return
        self._queue.append(message)
        self.buffered += len(message)
        if bounded and self.buffered > self.limit:
            self.close("too slow")
        self._event.set()

    def close(self, reason: str) -> None:
        self.closed = True
        self.close_reason = reason
        self._queue.clear()
        self._event.set()
        self.done.set()

    async def run(self) -> None:
        """Send queued messages until closed."""
        queue = self._queue
        while not self.closed:
            if not queue:
                self._event.clear()
                await self._event.wait()
                continue
            message = queue.popleft()
            self.buffered -= len(message)
            await self._send(message)


class Hub:
    """Subscribers, recent history and the broadcast of new placements."""

    def __init__(
        self,
        feed: Feed,
        *,
        replay_limit: int,
        send_buffer: int,
        max_per_ip: int,
    ) -> None:
        self.feed = feed
        self.replay_limit = replay_limit
        self.send_buffer = send_buffer
        self.max_per_ip = max_per_ip
        self.history = History(replay_limit)
        self.subscribers: set[Subscriber] = set()
        self._per_ip: dict[str, int] = {}
        self._unlisten: Callable[[], None] | None = None
        self.online: Callable[[], int] = lambda: len(self.subscribers)
        self.board_id = ""

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
        self.board_id = self.feed.board_id
        self._unlisten = self.feed.listen(self.publish, self.reset)

    def stop(self) -> None:
        if self._unlisten is not None:
            self._unlisten()
            self._unlisten = None
        for sub in list(self.subscribers):
            sub.close("server shutting down")

    # -- broadcast -----------------------------------------------------------------

    def publish(self, first_seq: int, records: bytes) -> None:
        """Broadcast placements ``first_seq ..``: one frame encoding, shared by all."""
        head = self.history.head
        if first_seq <= head:  # already have some: keep only the new part
            skip = head + 1 - first_seq
            records = records[skip * RECORD_SIZE :]
            first_seq = head + 1
            if not records:
                return
        elif first_seq > head + 1:
            log.error("placement feed skipped %d..%d; resyncing clients", head + 1, first_seq - 1)
            self.resync(first_seq - 1)
        self.history.append(first_seq, records)
        for frame in split_frames(first_seq, records):
            for sub in self.subscribers:
                sub.offer(frame)

    def reset(self, board_id: str, head: int) -> None:
        """The board was replaced (e.g. restored): every client reloads it."""
        self.board_id = board_id
        self.resync(head)

    def resync(self, head: int) -> None:
        """Forget history and tell every client to reload the board."""
        self.history.reset(head)
        message = control("resync", head=head, board=self.board_id)
        for sub in self.subscribers:
            sub.offer(message)

    def broadcast_online(self) -> None:
        message = control("online", count=self.online())
        for sub in self.subscribers:
            sub.offer(message)

    # -- clients -------------------------------------------------------------------

    def admit(self, ip: str) -> bool:
        """Reserve a connection slot for ``ip``; False if it has too many."""
        n = self._per_ip.get(ip, 0)
        if n >= self.max_per_ip:
            return False
        self._per_ip[ip] = n + 1
        return True

    def release(self, ip: str) -> None:
        n = self._per_ip.get(ip, 0) - 1
        if n <= 0:
            self._per_ip.pop(ip, None)
        else:
            self._per_ip[ip] = n

    async def attach(self, sub: Subscriber, since: int | None, board: str | None = None) -> None:
        """Queue ``hello``, then everything after ``since``, then subscribe to live frames.

        With ``since`` ``None`` the client only wants new placements. The client is
        told to resync (reload the board) if its ``board`` id is not the current one,
        if it is further behind than the replay limit, or if ``since`` is ahead of this
        server without a matching ``board`` (with one, it is a board fetched from a
        server slightly ahead of this one: frames it already has are skipped by it).
        """
        history = self.history
        sub.offer(control("hello", head=history.head, board=self.board_id))
        sent = history.head if since is None else since
        stale = board is not None and board != self.board_id
        ahead = sent > history.head and board is None
        if stale or ahead or history.head - sent > self.replay_limit:
            sub.offer(control("resync", head=history.head, board=self.board_id))
            sent = history.head
        sent = min(sent, history.head)
        while True:
            try:
                records = history.records(sent)  # no await from here to add(): no race
            except TooOld:
                upto = history.first - 1
                try:
                    older = await self.feed.records(sent, upto)
                except TooOld:
                    sub.offer(control("resync", head=history.head, board=self.board_id))
                    sent = history.head
                    continue
                for frame in split_frames(sent + 1, older):
                    sub.offer(frame, bounded=False)
                sent = upto
                continue
            for frame in split_frames(sent + 1, records):
                sub.offer(frame, bounded=False)
            self.subscribers.add(sub)
            sub.offer(control("online", count=self.online()))
            return

    def detach(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)


async def run_online_ticker(hub: Hub, interval: float) -> None:
    """Tell clients the online count whenever it changes (checked every ``interval``)."""
    last = -1
    while True:
        await asyncio.sleep(interval)
        n = hub.online()
        if n != last:
            last = n
            hub.broadcast_online()
