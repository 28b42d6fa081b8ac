"""Property-based fuzzing (hypothesis) of everything that parses client input on the
websocket side: the wire decoder, the ``/ws`` query, client messages, and both ``/ws``
servers over real sockets (malformed, fragmented, oversized, masked and unmasked
frames, control frames with big payloads, random bytes, hostile upgrade requests).

The servers must answer every case with a close code (the one websockets' own protocol
says, or 1007 for text that is not UTF-8) or a pong, never log a traceback or an
error, and keep feeding the other clients every placement.

Case counts are printed at the end. ``OPENPLACE_TEST_FUZZ_SCALE=20`` runs 20 times more
(the default run takes a few seconds per test); ``OPENPLACE_TEST_FUZZ_SEED=<n>`` makes
the run repeatable.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

from openplace.api.errors import Refusal
from openplace.core.wire import (
    HEADER_SIZE,
    RECORD_SIZE,
    FrameError,
    decode_frame,
    encode_record,
    split_frames,
)
from openplace.realtime.session import MAX_SINCE, answer_text, parse_query
from tests.test_hostile_ws import LogWatch, Target, start_target
from tests.test_realtime import StreamClient
from tests.wsraw import Peer, close, frame, text, upgrade

SCALE = float(os.environ.get("OPENPLACE_TEST_FUZZ_SCALE", "1"))
SEED = os.environ.get("OPENPLACE_TEST_FUZZ_SEED")  # replays a run
T = TypeVar("T")
Test = TypeVar("Test", bound=Callable[..., object])


def fuzz(n: int) -> Callable[[Test], Test]:
    """Run ``n`` examples (times the scale), from ``SEED`` if one is given."""
    config = settings(
        max_examples=max(1, int(n * SCALE)),
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    if SEED is None:
        return config
    seeded = seed(int(SEED))
    return lambda test: seeded(config(test))


@pytest.fixture(scope="module")
def cases(request: pytest.FixtureRequest) -> Iterator[Counter[str]]:
    """Counts of cases run, printed when the module is done."""
    counts: Counter[str] = Counter()
    yield counts
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line("")
            for name, n in sorted(counts.items()):
                reporter.write_line(f"fuzz: {n:6d}  {name}")


# -- pure decoders ---------------------------------------------------------------------


@fuzz(2000)
@given(st.binary(max_size=120) | st.binary(max_size=12).map(lambda b: b"\x01" + b))
def test_decode_frame_takes_any_bytes(cases: Counter[str], data: bytes) -> None:
    cases["wire.decode_frame: any bytes"] += 1
    try:
        first, items = decode_frame(data)
    except FrameError:
        return
    assert data[0] == 1 and len(items) == (len(data) - HEADER_SIZE) // RECORD_SIZE
    assert 0 <= first < 2**64


@fuzz(1000)
@given(
    st.integers(0, 2**63),
    st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 255)), min_size=1, max_size=40),
    st.integers(0, 400),
)
def test_frames_round_trip_and_truncations_are_refused(
    cases: Counter[str], first: int, records: list[tuple[int, int]], cut: int
) -> None:
    cases["wire.split_frames/decode_frame: round trip, truncated"] += 1
    (encoded,) = split_frames(first, b"".join(encode_record(i, c) for i, c in records))
    assert decode_frame(encoded) == (first, records)
    truncated = encoded[: min(cut, len(encoded) - 1)]
    if len(truncated) >= HEADER_SIZE and (len(truncated) - HEADER_SIZE) % RECORD_SIZE == 0:
        assert decode_frame(truncated)[1] == records[: (len(truncated) - HEADER_SIZE) // 5]
    else:
        with pytest.raises(FrameError):
            decode_frame(truncated)


_query_key = st.sampled_from(["since", "board", "sin%63e", "x", "", "since[]", "%FF"])
_query_value = st.one_of(
    st.integers(-5, 2**64).map(str),
    st.text(max_size=30),
    st.text(alphabet="0123456789", min_size=15, max_size=5000),
    st.sampled_from(["", "%FF", "%00", "%D9%A3", "1_0", "+1", " 1", "0x10", "1e3", "\u0663"]),
)


@fuzz(2000)
@given(
    st.one_of(
        st.text(max_size=200),
        st.lists(st.tuples(_query_key, _query_value), max_size=20).map(
            lambda kv: "&".join(f"{k}={v}" for k, v in kv)
        ),
    )
)
def test_parse_query_answers_anything(cases: Counter[str], query: str) -> None:
    cases["session.parse_query: any query"] += 1
    try:
        since, board = parse_query(query)
    except Refusal as refusal:
        assert refusal.status == 400 and refusal.code in ("bad_since", "bad_board", "bad_query")
        return
    assert since is None or 0 <= since <= MAX_SINCE
    assert board is None or (0 < len(board) <= 64 and board.isprintable())


@fuzz(500)
@given(st.integers(0, MAX_SINCE), st.text(min_size=1, max_size=64).filter(str.isprintable))
def test_parse_query_accepts_every_valid_since(cases: Counter[str], since: int, board: str) -> None:
    cases["session.parse_query: valid"] += 1
    from urllib.parse import urlencode

    assert parse_query(urlencode({"since": since, "board": board})) == (since, board)


_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False),
    st.text(max_size=80),
)  # fmt: skip
_json = st.recursive(
    _scalar,
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids, max_size=4)
    ),
    max_leaves=20,
)
_deep = st.tuples(st.integers(1, 1200), st.sampled_from(["[", '{"a":'])).map(
    lambda d: d[1] * d[0] + "1" + ("]" if d[1] == "[" else "}") * d[0]
)
_message = st.one_of(
    st.text(max_size=300),
    st.builds(
        lambda t, i: json.dumps({"type": t, "id": i}),
        st.sampled_from(["ping", "pong", "PING", 1, None]),
        _json,
    ),
    _deep.map(lambda d: '{"type": "ping", "id": ' + d + "}"),
    _json.map(json.dumps),
)


@fuzz(3000)
@given(_message)
def test_client_messages_always_get_a_small_valid_answer(cases: Counter[str], message: str) -> None:
    cases["session.answer_text: any message"] += 1
    answer = answer_text(message)
    body = orjson.loads(answer)
    assert body["type"] in ("pong", "error") and len(answer) < 200
    if body["type"] == "pong":
        sent = orjson.loads(message)
        assert sent["type"] == "ping" and sent.get("id") == body["id"]


# -- both servers over real sockets ----------------------------------------------------


class Harness:
    """Both servers in an event loop of their own thread, each with a reading client
    (the canary) and placements flowing, while the test thread attacks them."""

    def __init__(self, tmp: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.watch = LogWatch()
        self.tmp = tmp
        self.targets: dict[str, Target] = {}
        self.canaries: dict[str, StreamClient] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._placing = True

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def start(self) -> None:
        for kind in ("embedded", "lean"):
            # A short upgrade timeout so that a request fuzzed incomplete costs 1 s.
            t = await start_target(kind, self.tmp / kind, handshake_timeout=1.0)
            self.targets[kind] = t
            ws = await connect(t.ws_url + "?since=0")
            self.canaries[kind] = StreamClient(ws)
            self._tasks.append(asyncio.create_task(self._read(self.canaries[kind])))
        self._tasks.append(asyncio.create_task(self._place()))

    async def _read(self, canary: StreamClient) -> None:
        with contextlib.suppress(Exception):
            while True:
                await canary.read_one(timeout=3600)

    async def _place(self) -> None:
        for _ in range(20_000):  # bounded; stopped at the end of the fuzzing anyway
            if not self._placing:
                return
            for t in self.targets.values():
                await t.place(2)
            await asyncio.sleep(0.02)

    async def finish(self) -> dict[str, int]:
        """Stop placing; check that each canary got every placement; the heads."""
        self._placing = False
        await self._tasks[-1]
        heads = {}
        for kind, t in self.targets.items():
            head = await t.store.head()
            canary = self.canaries[kind]
            async with asyncio.timeout(30):
                while canary.last_seq < head:
                    await asyncio.sleep(0.01)
            assert sorted(canary.placements) == list(range(1, head + 1)), kind
            heads[kind] = head
        return heads

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for canary in self.canaries.values():
            await canary.ws.close()
        for t in self.targets.values():
            await t.stop()


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory, cases: Counter[str]) -> Iterator[Harness]:
    h = Harness(tmp_path_factory.mktemp("fuzz"))
    logging.getLogger().addHandler(h.watch)
    try:
        h.call(h.start())
        yield h
        heads = h.call(h.finish())
        for kind, head in heads.items():
            cases[f"placements seen by the {kind} canary, all of them"] = head
        assert not h.watch.problems()
    finally:
        logging.getLogger().removeHandler(h.watch)
        with contextlib.suppress(Exception):
            h.call(h.stop())
        h.loop.call_soon_threadsafe(h.loop.stop)
        h.thread.join(10)
        h.loop.close()


class Reference:
    """websockets' sans-I/O server fed the same bytes: what a correct server must do.

    The app adds one rule: a text message that is not UTF-8 is closed with 1007.
    """

    def __init__(self, max_message: int = 1024) -> None:
        self.proto = ServerProtocol(max_size=max_message, state=State.OPEN)
        self.out = Peer()
        self.out.status = 101
        self.text: list[bytes] | None = None
        self.code: int | None = None  # the close code a server sends
        self.fed = b""

    def feed(self, data: bytes) -> int | None:
        """The close code the server answers ``data`` with, or None if it stays open."""
        if self.code is not None:
            return self.code
        self.fed += data
        self.proto.receive_data(data)
        bad_text = False
        for event in self.proto.events_received():
            if not isinstance(event, Frame):
                continue
            if event.opcode is Opcode.TEXT:
                self.text = [bytes(event.data)]
            elif event.opcode is Opcode.BINARY:
                self.text = None
            elif event.opcode is Opcode.CONT and self.text is not None:
                self.text.append(bytes(event.data))
            if event.fin and event.opcode in (Opcode.TEXT, Opcode.CONT) and self.text is not None:
                try:
                    b"".join(self.text).decode()
                except UnicodeDecodeError:
                    bad_text = True
                    break
                self.text = None
        for chunk in self.proto.data_to_send():
            if chunk:
                self.out.feed(chunk)
        if self.out.close_code is not None:  # the protocol's own close wins: it came first
            self.code = self.out.close_code
        elif bad_text:
            self.code = 1007
        return self.code

    @property
    def mid_frame(self) -> bool:
        """Whether the bytes so far end inside a frame (the parser keeps no trace)."""
        data, i = self.fed, 0
        while i < len(data):
            if len(data) - i < 2:
                return True
            n, j = data[i + 1] & 127, i + 2
            if n >= 126:
                width = 2 if n == 126 else 8
                if len(data) < j + width:
                    return True
                n, j = int.from_bytes(data[j : j + width], "big"), j + width
            i = j + (4 if data[i + 1] & 128 else 0) + n
        return i > len(data)

    @property
    def mid_message(self) -> bool:
        return self.proto.current_size is not None


def _recv_until(sock: socket.socket, peer: Peer, done: Callable[[], bool]) -> None:
    """Read until ``done()`` or EOF (live frames keep coming: a deadline of its own)."""
    deadline = time.monotonic() + 10
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError("no answer")
        try:
            data = sock.recv(1 << 20)
        except ConnectionResetError:
            data = b""
        peer.feed(data)
        if not data:
            return


_mask = st.binary(min_size=4, max_size=4)
_payload = st.one_of(
    st.binary(max_size=40),
    st.text(max_size=40).map(str.encode),
    st.sampled_from([b'{"type":"ping","id":1}', b'{"type":"ping","id":' + b"[" * 300 + b"]" * 300
                     + b"}", b"\xff\xfe", b'{"type":"ping","id":"\xc3', b'\xa9"}', b"\x03\xe8"]),
    st.binary(min_size=100, max_size=1500),  # over 125 (control frames), over 1 KiB
)  # fmt: skip
_frame = st.builds(
    lambda op, data, fin, rsv, mask, lie, wide: frame(
        op, data, fin=fin, rsv=rsv, mask=mask, wide=wide,
        length=None if lie is None else (2**63 - 1 if lie == -1 else lie),
    ),
    st.sampled_from([0, 1, 2, 8, 9, 10]) | st.integers(0, 15),
    _payload,
    st.booleans() | st.just(True),
    st.sampled_from([0, 0, 0, 0, 1, 2, 4, 7]),
    _mask | _mask | st.none(),
    st.none() | st.none() | st.none() | st.integers(0, 2000) | st.just(-1),
    st.sampled_from([0, 0, 0, 1, 2]),
)  # fmt: skip
_close = st.builds(
    lambda code, reason: frame(8, code.to_bytes(2, "big") + reason),
    st.sampled_from([1000, 1001, 1005, 1006, 999, 1015, 2999, 3000, 4999, 5000]),
    st.binary(max_size=10) | st.text(max_size=10).map(str.encode),
)
# Well-formed frames too, so that cases also get past the first frame.
_data = st.builds(
    lambda op, data, fin, mask: frame(op, data, fin=fin, mask=mask),
    st.sampled_from([0, 1, 1, 2]), _payload.filter(lambda p: len(p) < 400),
    st.booleans() | st.just(True), _mask,
)  # fmt: skip
_control = st.builds(
    lambda op, data, mask: frame(op, data, mask=mask),
    st.sampled_from([9, 10]), st.binary(max_size=125), _mask,
)  # fmt: skip


def _fragments(cuts: list[int], ping_id: int) -> bytes:
    """A ping message in fragments cut at ``cuts``."""
    message = json.dumps({"type": "ping", "id": ping_id}).encode()
    points = sorted({0, *(c % len(message) for c in cuts), len(message)})
    parts = [message[a:b] for a, b in itertools.pairwise(points)]
    return b"".join(
        frame(1 if i == 0 else 0, part, fin=i == len(parts) - 1) for i, part in enumerate(parts)
    )


_ping = st.builds(_fragments, st.lists(st.integers(0, 100), max_size=4), st.integers(0, 99))
_piece = st.one_of(_data, _data, _control, _ping, _ping, _frame, _close,
                   st.binary(min_size=1, max_size=40))  # fmt: skip
_stream = st.lists(_piece, min_size=1, max_size=8)


def _attack(port: int, pieces: list[bytes]) -> str:
    """Open a websocket, send ``pieces``, check the answer; the outcome's name."""
    ref = Reference()
    data = b"".join(pieces)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(upgrade("/ws"))
        peer = Peer()
        _recv_until(sock, peer, lambda: peer.status != 0)
        assert peer.status == 101, peer.head
        sock.sendall(data)
        expected = ref.feed(data)
        outcome = "closed"
        if expected is None:
            if ref.mid_frame:  # complete it; zeros then are an unmasked frame: 1002
                probe, outcome = b"\x00" * 2048, "closed after completing a frame"
            elif ref.mid_message:
                probe, outcome = close(1000), "closed in a fragmented message"
            else:
                probe, outcome = text('{"type": "ping", "id": "probe"}'), "still answering"
            sock.sendall(probe)
            expected = ref.feed(probe)
        if expected is None:
            _recv_until(sock, peer, lambda: any('"probe"' in t for t in peer.texts()))
            assert any('"id":"probe"' in t for t in peer.texts()), peer.frames[-3:]
            sock.sendall(close(1000))
            expected = 1000
        _recv_until(sock, peer, lambda: False)
        assert peer.close_code == expected, (peer.close_code, expected, peer.frames[-3:])
    return f"{outcome} ({expected})"


@pytest.mark.parametrize("kind", ["embedded", "lean"])
def test_servers_survive_hostile_frames(harness: Harness, cases: Counter[str], kind: str) -> None:
    port = harness.targets[kind].port
    outcomes: Counter[str] = Counter()

    @fuzz(300)
    @given(_stream)
    def attack(pieces: list[bytes]) -> None:
        outcomes[_attack(port, pieces)] += 1
        assert not harness.watch.problems()

    attack()
    for outcome, n in outcomes.items():
        cases[f"{kind} /ws frames: {outcome}"] += n
    assert harness.call(_hello(harness.targets[kind]))


async def _hello(t: Target) -> bool:
    async with connect(t.ws_url) as ws:
        return bool(json.loads(await ws.recv())["type"] == "hello")


_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
                 min_size=1, max_size=20)  # fmt: skip
_header_value = st.one_of(
    st.text(max_size=40),
    st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
    st.sampled_from(["x" * 9000, "websocket", "Upgrade"]),
)
_standard = [
    ("Host", "x"),
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("Sec-WebSocket-Version", "13"),
]


@st.composite
def _requests(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from(["GET", "GET", "POST", "HEAD", "PUT", "get", "G\x00T", ""]))
    path = draw(st.one_of(
        st.sampled_from(["/ws", "/healthz", "/", "*", "/ws?since=1", "/healthz?x", "http://a/ws"]),
        st.text(max_size=60).map(lambda s: "/ws?" + s),
        st.just("/ws?since=" + "9" * 5000),
        st.just("/" + "a" * 9000),
    ))  # fmt: skip
    version = draw(
        st.sampled_from(["HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/2", "", "HTTP/1.1 x"])
    )
    headers = [h for h in _standard if draw(st.integers(0, 9))]  # each dropped 1 time in 10
    headers += draw(st.lists(st.tuples(_token, _header_value), max_size=6))
    if draw(st.integers(0, 9)) == 0:
        headers += [(f"X-{i}", "y" * 1000) for i in range(draw(st.integers(1, 40)))]
    order = draw(st.permutations(headers))
    head = f"{method} {path} {version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in order)
    raw = head.encode("utf-8", "surrogateescape")
    if draw(st.integers(0, 9)) == 0:
        raw = draw(st.binary(min_size=1, max_size=200))
    return raw.replace(b"\r\n\r\n", b"\r\n") + b"\r\n"


def test_lean_server_answers_hostile_upgrades(harness: Harness, cases: Counter[str]) -> None:
    """Any request gets an HTTP answer and the connection closes (or is upgraded)."""
    port = harness.targets["lean"].port
    statuses: Counter[int] = Counter()

    @fuzz(300)
    @given(_requests())
    def attack(request: bytes) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(request)
            peer = Peer()
            _recv_until(sock, peer, lambda: peer.status == 101 or peer.eof)
        assert peer.status in (101, 200, 505) or 400 <= peer.status < 500, peer.head
        assert peer.status == 101 or peer.eof
        statuses[peer.status] += 1
        assert not harness.watch.problems()

    attack()
    for status, n in sorted(statuses.items()):
        cases[f"lean upgrade requests answered {status}"] += n
