"""The fault checker (tests/faults): its checks on made-up histories, then a short seeded
run against a real stack with every kind of fault."""

from __future__ import annotations

import asyncio

import pytest
import pytest_asyncio

from openplace.core.board import Board, Geometry
from tests.faults import Config, check, run
from tests.faults.checker import ClientView, Report, Served
from tests.faults.history import History, Op, Outcome, classify
from tests.faults.nemesis import KINDS, Fault

G = Geometry(10, 10)


def history(*answers: tuple[Outcome, int | None]) -> History:
    """Op i places pixel i (colour 1 + i % 15), invoked at i s, answered at i + 0.5 s."""
    h = History(t0=0.0)
    for i, (outcome, seq) in enumerate(answers):
        op = Op(i, 0, i, 1 + i % 15, float(i), float(i) + 0.5, outcome, seq)
        h.ops.append(op)
    return h


def log_of(h: History, order: list[int]) -> list[tuple[int, int, int]]:
    """The log holding ops ``order`` as seq 1, 2, ..."""
    return [(seq, h.ops[i].index, h.ops[i].color) for seq, i in enumerate(order, start=1)]


def served_for(log: list[tuple[int, int, int]], board_id: str = "b.1") -> Served:
    board = Board(G)
    for _, idx, color in log:
        board.set(idx, color)
    return Served(len(log), board_id, bytes(board.data))


def run_check(
    h: History, log: list[tuple[int, int, int]], faults: list[Fault] | None = None,
    clients: list[ClientView] | None = None,
) -> Report:  # fmt: skip
    served = served_for(log)
    pixels = [(idx, color, seq) for seq, idx, color in log]
    if clients is None:
        clients = [ClientView("c0", served.board_id, served.seq, served.data)]
    return check(h, faults or [], log, pixels, served, clients, G)


def test_answers_are_classified_as_a_client_must_read_them() -> None:
    assert classify(200, b'{"seq": 7, "next_at": "x"}') == ("ok", 7, "")
    assert classify(429, b'{"error": "cooldown"}')[0] == "fail"
    assert classify(503, b'{"error": "unavailable", "message": "nothing changed"}')[0] == "fail"
    assert classify(503, b'{"error": "unconfirmed"}')[0] == "unknown"
    # nginx's 503: its backend may have died after placing it.
    nginx = b'{"error":"unavailable","message":"no backend answered; try again"}'
    assert classify(503, nginx)[0] == "unknown"
    assert classify(500, b"Internal Server Error")[0] == "unknown"


def test_a_clean_history_passes() -> None:
    h = history(("ok", 1), ("fail", None), ("unknown", None), ("ok", 3), ("unknown", None))
    report = run_check(h, log_of(h, [0, 2, 3]))
    assert report.passed, report.table()
    assert (report.ok, report.failed, report.unknown, report.unknown_in_log) == (2, 1, 2, 1)


def test_an_acknowledged_seq_that_names_another_placement_is_lost_and_double_acked() -> None:
    # Issue 7: op 0 was acknowledged as seq 2 after a restore at seq 1; seq 2 in the log
    # is op 1, which was acknowledged as seq 2 too; op 0's pixel is nowhere.
    h = history(("ok", 2), ("ok", 2), ("ok", 1))
    report = run_check(h, log_of(h, [2, 1]))
    assert report.lost == 1 and report.double_acked == 1
    assert not report.passed
    assert any("lost: op 0" in v for v in report.violations)


def test_gaps_duplicates_failures_that_happened_and_acks_without_postgresql_are_found() -> None:
    h = history(("ok", 1), ("fail", None), ("ok", 4), ("ok", 5), ("ok", 7))
    # seq 2 is missing; op 1 failed yet is seq 3; op 3 is in the log twice (5 and 6).
    log = [(1, 0, h.ops[0].color), (3, 1, h.ops[1].color), (4, 2, h.ops[2].color),
           (5, 3, h.ops[3].color), (6, 3, h.ops[3].color), (7, 4, h.ops[4].color)]  # fmt: skip
    # PostgreSQL was down from 2.9 to 3.6 s: op 3 (invoked 3.0, answered 3.5) was not
    # durable when acknowledged. Healed at 3.7 s; op 4 answered at 4.5 s.
    down = Fault("pg-stop", "postgresql", 2.8, 3.7, pg_down=(2.9, 3.6))
    report = run_check(h, log, [down])
    assert not report.gapless
    assert report.duplicated == 1 and report.failed_present == 1
    assert report.acked_pg_down == 1 and report.lost == 0
    assert report.recoveries == {"pg-stop": [pytest.approx(0.8)]}
    assert report.stalls == {"pg-stop": [pytest.approx(1.0)]}  # no ack from 3.5 s to 4.5 s


def test_a_client_behind_or_with_another_board_is_found() -> None:
    h = history(("ok", 1), ("ok", 2))
    log = log_of(h, [0, 1])
    served = served_for(log)
    behind = ClientView("behind", served.board_id, 1, served_for(log[:1]).data)
    wrong = bytearray(served.data)
    wrong[0] ^= 0x10
    different = ClientView("different", served.board_id, 2, bytes(wrong))
    report = run_check(h, log, clients=[behind, different])
    assert report.clients_equal == 0 and len(report.violations) == 2


def test_a_gap_in_a_clients_stream_fails_the_check_even_if_it_caught_up() -> None:
    h = history(("ok", 1), ("ok", 2))
    log = log_of(h, [0, 1])
    served = served_for(log)
    gapped = ClientView("c1", served.board_id, 2, served.data, gaps=1)
    report = run_check(h, log, clients=[gapped])
    assert report.clients_equal == 1 and report.client_gaps == 1
    assert report.violations == ["websocket streams skipped seqs 1 times: c1 1"]
    assert "gaps in clients' streams" in report.table()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def soak() -> Report:
    """A short seeded soak: 2 API, 2 realtime, 2 persisters and nginx on its own Redis and
    PostgreSQL; two faults of each kind at seeded random times while users place pixels
    and websocket clients follow; then the log, the served board and every client."""
    config = Config(seed=7, rounds=2, writers=6, clients=4, width=400, height=250,
                    warmup=1.5, gap=(0.8, 2.0), after=1.5)  # fmt: skip
    async with asyncio.timeout(170):  # a hung stack fails the test (and is cleaned up)
        report = await run(config)
    print(report.table())
    return report


def test_no_acknowledged_placement_is_lost_under_every_kind_of_fault(soak: Report) -> None:
    injected = {kind: len(times) for kind, times in soak.recoveries.items()}
    assert injected == dict.fromkeys(KINDS, 2), injected
    assert soak.ok > 0 and soak.clients == 4
    assert soak.lost == 0, soak.table()
    assert soak.double_acked == 0, soak.table()
    assert soak.gapless and soak.clients_equal == soak.clients, soak.table()
    assert not soak.violations, soak.table()


def test_every_process_survives_the_faults_and_the_stack_recovers(soak: Report) -> None:
    assert not soak.problems, soak.table()
