"""The checker: the history against what PostgreSQL, the server and the clients hold.

Every placement was on a pixel of its own, so the log can be checked exactly:

- **lost**: an ok placement whose pixel is not in the log at all;
- **wrong seq**: an ok placement whose pixel is in the log, but not under the seq it
  was acknowledged with (that seq names another placement);
- **double-acked**: one seq acknowledged to two or more placements;
- **gapless**: the log's seqs are exactly 1..max;
- **duplicated**: a pixel in the log twice (one request placed twice, e.g. a retried
  script); **phantom**: a log row no request asked for (pixel or colour);
- **failed but present**: a placement answered as definitely failed ("nothing
  changed") that is in the log;
- **acked while PostgreSQL was down**: an ok placement invoked and answered entirely
  inside a window in which PostgreSQL was stopped or paused;
- **served board**: ``GET /api/board`` is the log replayed, at the log's last seq, and
  the ``pixels`` table agrees with the log;
- **clients**: every websocket client's board, board id and seq equal the server's;

Besides these violations, the report lists **problems**: the stack did not stay whole or
did not come back (a process that exited although no fault was dealt to it; no
placement acknowledged within 30 s of healing; no active persister to kill). Either
fails the run.
"""

from __future__ import annotations

import bisect
import itertools
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from openplace.core.board import Board, Geometry
from tests.faults.history import History, Op
from tests.faults.nemesis import KINDS, Fault

DETAILS = 8  # violations listed per category; all are counted


@dataclass
class Served:
    """The board as ``GET /api/board?fresh=`` served it at the end."""

    seq: int
    board_id: str
    data: bytes


@dataclass
class ClientView:
    """A websocket client's state at the end."""

    name: str
    board_id: str
    last: int
    data: bytes | None
    summary: str = ""
    crashed: str = ""
    board_loads: int = 1  # fetches of the whole board: 1 if it always resumed
    resyncs: int = 0
    gaps: int = 0  # frames that skipped seqs (the client then resumed)


@dataclass
class Report:
    seed: int
    seconds: float = 0.0
    operations: int = 0
    ok: int = 0
    failed: int = 0
    unknown: int = 0
    unknown_in_log: int = 0  # unknown outcomes that did happen
    server_errors: int = 0  # answers 5xx other than 503
    recoveries: dict[str, list[float | None]] = field(default_factory=dict)  # kind -> seconds
    # kind -> the longest time without an acknowledgement from the fault to the next one
    stalls: dict[str, list[float]] = field(default_factory=dict)
    lost: int = 0
    wrong_seq: int = 0
    double_acked: int = 0
    duplicated: int = 0
    phantom: int = 0
    failed_present: int = 0
    acked_pg_down: int = 0
    log_rows: int = 0
    log_max: int = 0
    gapless: bool = True
    served_equal: bool = True
    pixels_mismatch: int = 0
    clients: int = 0
    clients_equal: int = 0
    client_reloads: int = 0  # board fetches after the first: a client that could not resume
    client_gaps: int = 0  # frames that skipped seqs: the stream's promise broken
    violations: list[str] = field(default_factory=list)  # what was promised and broken
    problems: list[str] = field(default_factory=list)  # the stack did not stay whole
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.violations and not self.problems

    def table(self) -> str:
        """The figures, as a plain-text table."""
        lines = [f"fault check, seed {self.seed}, {self.seconds:.0f} s of load"]

        def row(name: str, value: object, extra: str = "") -> None:
            lines.append(f"  {name:<32} {value!s:>10}  {extra}".rstrip())

        row("operations", self.operations)
        row("acknowledged (ok)", self.ok)
        row("failed (definite)", self.failed)
        row("unknown", self.unknown, f"{self.unknown_in_log} of them in the log")
        row("5xx other than 503", self.server_errors)
        lines.append(f"  {'faults':<32} {'injected':>10}  recovery median / max   "
                     "longest stall")  # fmt: skip
        for kind in KINDS:
            times = self.recoveries.get(kind, [])
            done = [t for t in times if t is not None]
            rec = "-"
            if done:
                rec = f"{statistics.median(done):.2f} s / {max(done):.2f} s"
            stall = max(self.stalls.get(kind, []), default=None)
            if stall is not None:
                rec = f"{rec:<24}{stall:.2f} s"
            if len(done) < len(times):
                rec += f"  ({len(times) - len(done)} never recovered)"
            row("  " + kind, len(times), rec)
        row("log rows (max seq)", self.log_rows, f"max seq {self.log_max}")
        row("lost", self.lost)
        row("acknowledged under a wrong seq", self.wrong_seq)
        row("double-acked seqs", self.double_acked)
        row("log gapless", "yes" if self.gapless else "NO")
        row("pixels placed twice", self.duplicated)
        row("phantom log rows", self.phantom)
        row("failed but in the log", self.failed_present)
        row("acked while PostgreSQL down", self.acked_pg_down)
        row("served board = log", "yes" if self.served_equal else "NO")
        row("pixels table = log", "yes" if not self.pixels_mismatch else "NO",
            f"{self.pixels_mismatch} differ" if self.pixels_mismatch else "")  # fmt: skip
        row("clients equal to server", f"{self.clients_equal}/{self.clients}")
        row("board reloads by clients", self.client_reloads)
        row("gaps in clients' streams", self.client_gaps)
        verdict = "PASS" if self.passed else "FAIL"
        count = f"  {len(self.violations)} violations, {len(self.problems)} problems"
        lines.append(f"  {'verdict':<32} {verdict:>10}{count if not self.passed else ''}")
        for v in self.violations:
            lines.append("  ! " + v)
        for p in self.problems:
            lines.append("  ? " + p)
        for n in self.notes:
            lines.append("  - " + n)
        return "\n".join(lines)


def check(
    history: History,
    faults: Sequence[Fault],
    log: Iterable[tuple[int, int, int]],
    pixels: Iterable[tuple[int, int, int]],
    served: Served,
    clients: Sequence[ClientView],
    geometry: Geometry,
    *,
    problems: Sequence[str] = (),
    seed: int = 0,
) -> Report:
    """``log`` is ``placements`` as (seq, idx, color); ``pixels`` the ``pixels`` table as
    (idx, color, seq)."""
    report = Report(seed)
    ops = history.ops
    complete = [op for op in ops if op.outcome is not None and op.complete is not None]
    if ops:
        ends = [op.complete for op in complete if op.complete is not None]
        report.seconds = max(ends, default=ops[0].invoke) - ops[0].invoke
    report.operations = len(ops)
    oks = [op for op in complete if op.outcome == "ok"]
    report.ok = len(oks)
    report.failed = sum(op.outcome == "fail" for op in complete)
    report.unknown = sum(op.outcome == "unknown" for op in complete)
    report.server_errors = sum(
        op.status is not None and op.status >= 500 and op.status != 503 for op in complete
    )
    incomplete = len(ops) - len(complete)
    v = report.violations

    def where(op: Op) -> str:
        x, y = geometry.xy(op.index)
        text = (f"op {op.id} (writer {op.writer}) ({x},{y}) idx {op.index} colour {op.color}, "
                f"invoked {history.rel(op.invoke)} s, "
                f"answered {history.rel(op.complete)} s")  # fmt: skip
        # The last fault that began before the answer came back, relative to the invoke.
        before = [f for f in faults if op.complete is not None and f.start <= op.complete]
        if before:
            f = before[-1]
            text += (f"; {f.kind} at {history.rel(f.start)} s "
                     f"({f.start - op.invoke:+.3f} s from the invoke)")  # fmt: skip
        return text

    def violation(category: str, count: int, message: str) -> None:
        if count <= DETAILS:
            v.append(f"{category}: {message}")
        elif count == DETAILS + 1:
            v.append(f"{category}: (more not listed; see the count above)")

    if incomplete:
        v.append(f"history: {incomplete} operations never completed")
    report.problems.extend(problems)

    # The log.
    by_seq: dict[int, tuple[int, int]] = {}
    by_index: dict[int, list[int]] = defaultdict(list)
    for seq, idx, color in log:
        by_seq[seq] = (idx, color)
        by_index[idx].append(seq)
    report.log_rows = len(by_seq)
    report.log_max = max(by_seq, default=0)
    if sorted(by_seq) != list(range(1, report.log_max + 1)):
        report.gapless = False
        missing = sorted(set(range(1, report.log_max + 1)) - set(by_seq))
        v.append(f"gapless: the log has {report.log_rows} rows up to seq {report.log_max}; "
                 f"missing seqs {missing[:20]}{' ...' if len(missing) > 20 else ''}")  # fmt: skip

    # Every ok placement under its seq, with its pixel and colour.
    for op in oks:
        assert op.seq is not None
        row = by_seq.get(op.seq)
        if row == (op.index, op.color):
            continue
        holds = f"seq {op.seq} holds " + (f"idx {row[0]} colour {row[1]}" if row else "nothing")
        if op.index in by_index:
            report.wrong_seq += 1
            violation("wrong seq", report.wrong_seq,
                      f"{where(op)}: acknowledged seq {op.seq}, but it is logged as seq "
                      f"{by_index[op.index]}; {holds}")  # fmt: skip
        else:
            report.lost += 1
            violation("lost", report.lost,
                      f"{where(op)}: acknowledged seq {op.seq}; {holds}; "
                      "its pixel is nowhere in the log")  # fmt: skip

    # No seq acknowledged twice.
    acked: dict[int, list[Op]] = defaultdict(list)
    for op in oks:
        assert op.seq is not None
        acked[op.seq].append(op)
    for seq, same in sorted(acked.items()):
        if len(same) > 1:
            report.double_acked += 1
            violation("double-acked", report.double_acked,
                      f"seq {seq} acknowledged to {len(same)} placements: "
                      + "; ".join(where(op) for op in same))  # fmt: skip

    # Each pixel once, and only as asked.
    requested = {op.index: op for op in ops}
    for idx, seqs in sorted(by_index.items()):
        if len(seqs) > 1:
            report.duplicated += 1
            violation("placed twice", report.duplicated,
                      f"idx {idx} is in the log under seqs {seqs}")  # fmt: skip
        asked = requested.get(idx)
        for seq in seqs:
            if asked is None or by_seq[seq][1] != asked.color:
                report.phantom += 1
                violation("phantom", report.phantom,
                          f"seq {seq} idx {idx} colour {by_seq[seq][1]}: "
                          + ("no request placed this pixel" if asked is None
                             else f"requested colour {asked.color}"))  # fmt: skip
    for op in complete:
        if op.outcome == "fail" and op.index in by_index:
            report.failed_present += 1
            violation("failed but present", report.failed_present,
                      f"{where(op)}: answered '{op.detail}', yet logged as seq "
                      f"{by_index[op.index]}")  # fmt: skip
        if op.outcome == "unknown" and op.index in by_index:
            report.unknown_in_log += 1

    # Nothing acknowledged while PostgreSQL could not have committed it.
    windows = [(f, f.pg_down) for f in faults if f.pg_down is not None]
    for op in oks:
        assert op.complete is not None
        for f, (down, up) in windows:
            if down <= op.invoke and op.complete <= up:
                report.acked_pg_down += 1
                violation("acked while PostgreSQL down", report.acked_pg_down,
                          f"{where(op)}: seq {op.seq}, inside the {f.kind} window "
                          f"{history.rel(down)}..{history.rel(up)} s")  # fmt: skip

    # The served board is the log replayed.
    replayed = Board(geometry)
    for seq in sorted(by_seq):
        replayed.set(*by_seq[seq])
    expected = bytes(replayed.data)
    if served.seq != report.log_max or served.data != expected:
        report.served_equal = False
        diff = -1
        if len(served.data) == geometry.nbytes:
            got = Board(geometry, served.data)
            diff = sum(replayed.get(i) != got.get(i) for i in range(geometry.pixels))
        v.append(f"served board: X-Seq {served.seq} (log max {report.log_max}), "
                 f"{diff} pixels differ from the log replayed")  # fmt: skip
    pixel_rows = {idx: (color, seq) for idx, color, seq in pixels}
    latest = {idx: (by_seq[seqs[-1]][1], seqs[-1])
              for idx, seqs in by_index.items()}  # fmt: skip
    report.pixels_mismatch = sum(pixel_rows.get(i) != latest[i] for i in latest) + len(
        set(pixel_rows) - set(latest)
    )
    if report.pixels_mismatch:
        v.append(f"pixels table: {report.pixels_mismatch} pixels disagree with the log")

    # Every client holds the server's board.
    report.clients = len(clients)
    report.client_reloads = sum(max(0, c.board_loads - 1) for c in clients)
    report.client_gaps = sum(c.gaps for c in clients)
    if report.client_gaps:
        v.append(f"websocket streams skipped seqs {report.client_gaps} times: "
                 + ", ".join(f"{c.name} {c.gaps}" for c in clients if c.gaps))  # fmt: skip
    for c in clients:
        equal = (c.board_id == served.board_id and c.last == served.seq
                 and c.data == served.data)  # fmt: skip
        if equal and not c.crashed:
            report.clients_equal += 1
            continue
        if c.crashed:
            why = f"crashed: {c.crashed}"
        elif c.board_id != served.board_id or c.last != served.seq:
            why = (f"at seq {c.last} of board {c.board_id}, the server at seq {served.seq} "
                   f"of board {served.board_id}")  # fmt: skip
        else:
            cb = Board(geometry, c.data) if c.data is not None else Board(geometry)
            differ = [i for i in range(geometry.pixels) if cb.get(i) != replayed.get(i)]
            why = f"{len(differ)} pixels differ, e.g. idx {differ[:5]}"
        v.append(f"client {c.name}: {why} ({c.summary})")

    # Recovery: from each fault's heal to the next acknowledgement.
    ok_ends = sorted(op.complete for op in oks if op.complete is not None)
    for f in faults:
        times = report.recoveries.setdefault(f.kind, [])
        if f.heal is None:
            times.append(None)
            continue
        k = bisect.bisect_left(ok_ends, f.heal)
        times.append(ok_ends[k] - f.heal if k < len(ok_ends) else None)
    # Stall: the longest time without an acknowledgement, from a fault to the next fault.
    for i, f in enumerate(faults):
        end = faults[i + 1].start if i + 1 < len(faults) else max(ok_ends[-1:], default=f.start)
        lo, hi = bisect.bisect_left(ok_ends, f.start), bisect.bisect_left(ok_ends, end)
        points = [f.start, *ok_ends[lo:hi], max(end, f.start)]
        stall = max((b - a for a, b in itertools.pairwise(points)), default=0.0)
        report.stalls.setdefault(f.kind, []).append(stall)

    outcomes = Counter(op.detail for op in complete if op.outcome != "ok")
    if outcomes:
        common = ", ".join(f"{d or '?'} x{n}" for d, n in outcomes.most_common(6))
        report.notes.append(f"most common non-ok answers: {common}")
    return report
