"""The fan-out hub on its own: one encoding for all, bounded buffers, history fallback."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable

import pytest
from starlette.types import Message as ASGIMessage
from starlette.websockets import WebSocket

from openplace.core.history import TooOld
from openplace.core.wire import decode_frame, encode_record
from openplace.realtime.endpoint import NO_TRANSPORT, websocket_endpoint
from openplace.realtime.hub import Hub, Message
from openplace.storage.base import Listener, ResetListener

Send = Callable[[Message], Awaitable[None]]


class Subscriber:
    """A test client: its outgoing queue, drained by :meth:`run` through ``send``."""

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

    def write(self, frame: bytes, message: Message) -> None:
        """A broadcast message (``frame`` is its websocket encoding, unused here)."""
        self.offer(message)

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

    def close(self, reason: str, code: int = 1001) -> None:
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


class ListFeed:
    """A Feed over a list of records held in memory (seq = position + 1)."""

    def __init__(self, n: int = 0, oldest: int = 1) -> None:
        self.recs = [encode_record(i, i % 16) for i in range(n)]
        self.oldest = oldest  # first seq still readable
        self.listeners: list[Listener] = []
        self.board_id = "b1"
        self.newer_board: str | None = None
        self.resets: list[ResetListener] = []

    async def head(self) -> int:
        return len(self.recs)

    async def records(self, after: int, upto: int) -> bytes:
        if after + 1 < self.oldest:
            raise TooOld("trimmed")
        return b"".join(self.recs[after:upto])

    async def refresh(self) -> None:
        if self.newer_board is not None:  # a restore this feed had not noticed yet
            self.board_id, self.newer_board = self.newer_board, None
            for on_reset in self.resets:
                on_reset(self.board_id, len(self.recs))

    def listen(self, listener: Listener, on_reset: ResetListener) -> Callable[[], None]:
        self.listeners.append(listener)
        self.resets.append(on_reset)
        return lambda: self.listeners.remove(listener)

    def add(self, k: int) -> None:
        first = len(self.recs) + 1
        new = [encode_record(i, i % 16) for i in range(len(self.recs), len(self.recs) + k)]
        self.recs += new
        for listener in self.listeners:
            listener(first, b"".join(new))


def collect() -> tuple[list[Message], Send]:
    got: list[bytes | str] = []

    async def send(m: bytes | str) -> None:
        got.append(m)

    return got, send


def seqs(messages: list[bytes | str]) -> list[int]:
    out: list[int] = []
    for m in messages:
        if isinstance(m, bytes):
            first, items = decode_frame(m)
            out += range(first, first + len(items))
    return out


async def drain(*subs: Subscriber) -> None:
    tasks = [asyncio.create_task(s.run()) for s in subs]
    await asyncio.sleep(0.01)
    for t in tasks:
        t.cancel()


async def test_every_subscriber_gets_the_same_frame_object() -> None:
    feed = ListFeed()
    hub = Hub(feed, replay_limit=100, send_buffer=10_000, max_per_ip=10)
    await hub.start()
    (ga, sa), (gb, sb) = collect(), collect()
    a, b = Subscriber(sa, 10_000), Subscriber(sb, 10_000)
    await hub.attach(a, None)
    await hub.attach(b, None)
    feed.add(3)
    await drain(a, b)
    fa = [m for m in ga if isinstance(m, bytes)]
    fb = [m for m in gb if isinstance(m, bytes)]
    assert len(fa) == 1 and fa[0] is fb[0]  # encoded once, shared
    assert seqs(ga) == [1, 2, 3]


class SlowSink:
    """A client whose every send takes at least ``seconds`` (a busy or slow machine)."""

    closed = False
    close_reason = ""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.messages: list[Message] = []

    def offer(self, message: Message, *, bounded: bool = True) -> None:
        pass

    def write(self, frame: bytes, message: Message) -> None:
        until = time.perf_counter() + self.seconds
        while time.perf_counter() < until:
            pass
        self.messages.append(message)

    def close(self, reason: str, code: int = 1001) -> None:
        self.closed = True


async def test_slower_sends_make_bigger_batches_not_a_backlog() -> None:
    """The gathering interval follows the measured cost of a send: at 200 µs a send,
    100 clients take 20 ms a flush, so placements are gathered for 20 ms (share 0.5)
    and every placement still reaches every client, in fewer frames."""
    feed = ListFeed()
    hub = Hub(feed, replay_limit=1000, send_buffer=10_000, max_per_ip=1000, send_share=0.5)
    await hub.start()
    sinks = [SlowSink(200e-6) for _ in range(100)]
    for sink in sinks:
        await hub.attach(sink, None)
    fast_guess = hub.batch_delay()  # before any flush: the default 10 µs a send
    assert fast_guess == pytest.approx(100 * 10e-6)
    for _ in range(3):  # each flush measures the sends again
        feed.add(1)
        while hub.sent < len(feed.recs):
            await asyncio.sleep(0.005)
    assert hub.send_cost.seconds >= 100e-6  # moved most of the way to 200 µs, from 10
    assert hub.batch_delay() >= 10 * fast_guess
    assert hub.batch_delay() == pytest.approx(100 * hub.send_cost.seconds)
    for _ in range(20):  # placements arriving one by one, faster than a flush
        feed.add(1)
        await asyncio.sleep(0.001)
    while hub.sent < len(feed.recs):
        await asyncio.sleep(0.005)
    messages = sinks[0].messages
    assert seqs(messages) == list(range(1, len(feed.recs) + 1))  # every one, in order
    assert len(messages) < 3 + 20  # the 20 late ones shared frames


async def test_slow_subscriber_is_closed_others_unaffected() -> None:
    feed = ListFeed()
    hub = Hub(feed, replay_limit=1000, send_buffer=200, max_per_ip=10)
    await hub.start()
    blocked = asyncio.Event()

    async def never(m: bytes | str) -> None:
        await blocked.wait()  # a client that never reads

    got, fast_send = collect()
    slow, fast = Subscriber(never, 200), Subscriber(fast_send, 10_000)
    await hub.attach(slow, 0)
    await hub.attach(fast, 0)
    tasks = [asyncio.create_task(s.run()) for s in (slow, fast)]
    for _ in range(20):
        feed.add(5)
        await asyncio.sleep(0)
    assert slow.closed and slow.close_reason == "too slow" and slow.done.is_set()
    assert slow.buffered <= 200 + 9 + 25  # never more than one message over the limit
    assert not fast.closed
    await asyncio.sleep(0.01)
    assert seqs(got) == list(range(1, 101))
    for t in tasks:
        t.cancel()


async def test_history_older_than_memory_comes_from_the_feed() -> None:
    feed = ListFeed(50)
    hub = Hub(feed, replay_limit=20, send_buffer=100_000, max_per_ip=10)
    await hub.start()
    assert hub.history.first == 31  # memory holds the last 20
    got, send = collect()
    sub = Subscriber(send, 100_000)
    await hub.attach(sub, 35)
    await drain(sub)
    assert seqs(got) == list(range(36, 51))
    hub.replay_limit = 100  # allowed further back than memory: read from the feed
    got2, send2 = collect()
    sub2 = Subscriber(send2, 100_000)
    await hub.attach(sub2, 10)
    await drain(sub2)
    assert seqs(got2) == list(range(11, 51))


async def test_trimmed_feed_means_resync() -> None:
    feed = ListFeed(50, oldest=40)
    hub = Hub(feed, replay_limit=100, send_buffer=100_000, max_per_ip=10)
    await hub.start()
    got, send = collect()
    sub = Subscriber(send, 100_000)
    await hub.attach(sub, 5)
    feed.add(2)
    await drain(sub)
    assert any(isinstance(m, str) and '"resync"' in m for m in got)
    assert seqs(got) == [51, 52]


async def test_gap_in_feed_resyncs_clients() -> None:
    feed = ListFeed()
    hub = Hub(feed, replay_limit=100, send_buffer=100_000, max_per_ip=10)
    await hub.start()
    got, send = collect()
    sub = Subscriber(send, 100_000)
    await hub.attach(sub, 0)
    hub.publish(1, encode_record(1, 1))
    hub.publish(1, encode_record(1, 1))  # duplicate: ignored
    hub.publish(5, encode_record(5, 5))  # gap: resync, then continue from 5
    await drain(sub)
    assert seqs(got) == [1, 5]
    assert sum(isinstance(m, str) and '"resync"' in m for m in got) == 1


async def test_replay_then_flush_repeat_nothing_after_a_burst_bigger_than_memory() -> None:
    feed = ListFeed(10)
    hub = Hub(feed, replay_limit=5, send_buffer=100_000, max_per_ip=10)
    await hub.start()
    feed.add(10)  # 11..20 published, not yet flushed; memory holds 16..20
    got, send = collect()
    sub = Subscriber(send, 100_000)
    await hub.attach(sub, 8)  # 9, 10 from the feed; 11.. with the flush
    await drain(sub)
    assert seqs(got) == list(range(9, 21))


@pytest.mark.parametrize("n", [1, 3])
async def test_per_ip_admission(n: int) -> None:
    hub = Hub(ListFeed(), replay_limit=10, send_buffer=10, max_per_ip=n)
    assert all(hub.admit("1.2.3.4") for _ in range(n))
    assert not hub.admit("1.2.3.4") and hub.admit("5.6.7.8")
    hub.release("1.2.3.4")
    assert hub.admit("1.2.3.4")


async def test_client_with_a_newer_board_is_not_sent_back_to_an_older_one() -> None:
    """A realtime process that has not yet noticed a restore catches up first."""
    feed = ListFeed(5)
    hub = Hub(feed, replay_limit=100, send_buffer=100_000, max_per_ip=10)
    await hub.start()
    feed.newer_board = "b2"  # restored; this process would notice at its next poll
    got, send = collect()
    sub = Subscriber(send, 100_000)
    await hub.attach(sub, 5, "b2")
    await drain(sub)
    texts = [m for m in got if isinstance(m, str)]
    assert hub.board_id == "b2"
    assert '"board":"b2"' in texts[0] and not any('"resync"' in t for t in texts)


async def test_endpoint_refuses_a_server_without_the_transport(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No fallback path: an ASGI server not exposing the transport gets a clear refusal."""
    sent: list[ASGIMessage] = []

    async def receive() -> ASGIMessage:
        return {"type": "websocket.connect"}

    async def send(message: ASGIMessage) -> None:
        sent.append(message)

    scope = {"type": "websocket", "path": "/ws", "headers": [], "query_string": b""}
    await websocket_endpoint(WebSocket(scope, receive, send))
    assert [m["type"] for m in sent] == ["websocket.close"] and sent[0]["code"] == 1011
    assert NO_TRANSPORT in caplog.text
