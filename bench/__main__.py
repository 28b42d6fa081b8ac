"""``python -m bench``: run every benchmark, print the table, write docs/benchmarks.md.

python -m bench                 # the targets' scale, 3 runs each (about 10 minutes)
python -m bench --smoke         # seconds; what the test suite runs
python -m bench --only placements,fanout --modes distributed
python -m bench --only history --runs 1 --out -   # a 10M-placement history, both modes
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from harness.servers import PostgresServer

from bench import browser, report, scenarios
from bench.stack import Distributed, Embedded

ALL = ("placements", "event", "fanout", "board", "ceiling", "restore", "catchup", "history", "page")

SCALES: dict[str, dict[str, Any]] = {
    "full": {
        "runs": 3,
        "users": 256,
        "duration": 8,
        "procs": 1,
        "clients": 20_000,
        "embedded_clients": 5_000,
        "rate": 1000,
        "fan_duration": 10,
        "board_duration": 5,
        "board_placing": 1000,
        "placements_n": 1_000_000,
        "event_connections": 64,
        "event_duration": 8,
        "event_rate": 30_000,  # tokens are signed for this rate over the run, beforehand
        "behind": 100_000,
        "history_n": 10_000_000,
        "history_requests": 300,
        "video_n": 1_000_000,
        "video_frames": 1800,
    },
    "smoke": {
        "runs": 1,
        "users": 16,
        "duration": 2,
        "procs": 1,
        "clients": 50,
        "embedded_clients": 50,
        "rate": 100,
        "fan_duration": 2,
        "board_duration": 1,
        "board_placing": 50,
        "placements_n": 20_000,
        "event_connections": 8,
        "event_duration": 2,
        "event_rate": 10_000,
        "behind": 2_000,
        "history_n": 50_000,
        "history_requests": 20,
        "video_n": 50_000,
        "video_frames": 30,
    },
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one run")
    parser.add_argument("--runs", type=int, help="runs per figure (median is reported)")
    parser.add_argument("--only", default=",".join(ALL), help="comma-separated: " + ",".join(ALL))
    parser.add_argument("--modes", default="embedded,distributed")
    parser.add_argument("--clients", type=int, help="websocket clients (distributed fan-out)")
    parser.add_argument("--rate", type=int, help="placements/s during the fan-out run")
    parser.add_argument(
        "--out", default=None,
        help="report ('-': none; default docs/benchmarks.md, but none for --smoke)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.out is None:  # a smoke run's figures must not replace the committed report
        args.out = "-" if args.smoke else "docs/benchmarks.md"
    scale = dict(SCALES["smoke" if args.smoke else "full"])
    if args.runs:
        scale["runs"] = args.runs
    if args.clients:
        scale["clients"] = args.clients
    if args.rate:
        scale["rate"] = args.rate
    only = set(args.only.split(","))
    modes = args.modes.split(",")
    command = "python -m bench " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    started = time.monotonic()

    def say(message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {message}", flush=True)

    results: dict[str, Any] = {
        "command": command.strip(),
        "machine": report.machine(),
        "scale": scale,
        "figures": {},
    }
    figures = results["figures"]
    postgres = PostgresServer().start() if "distributed" in modes else None
    try:
        for mode in modes:
            if only & {"placements", "event", "fanout", "catchup", "board"}:
                figures.update(run_live(mode, only, scale, postgres, say))
        if "ceiling" in only:
            say("ceiling: redis-benchmark running the placement script")
            figures["ceiling.redis"] = scenarios.median_of(
                [scenarios.redis_ceiling() for _ in range(scale["runs"])]
            )
        if "event" in only:
            say("ceiling: redis-benchmark running the placement script, cooldowns on")
            cooldown_ms = str(int(scenarios.EVENT_COOLDOWN) * 1000)
            figures["ceiling.event"] = scenarios.median_of(
                [scenarios.redis_ceiling(cooldown_ms=cooldown_ms) for _ in range(scale["runs"])]
            )
        if "restore" in only:
            n = scale["placements_n"]
            if "distributed" in modes:
                assert postgres is not None
                say(f"restore: distributed board from PostgreSQL after {n:,} placements")
                figures["distributed.restore"] = scenarios.median_of(
                    [scenarios.restore_distributed(postgres, n, say) for _ in range(scale["runs"])]
                )
            if "embedded" in modes:
                say(f"restart: embedded store after {n:,} placements")
                figures["embedded.restart"] = scenarios.median_of(
                    [scenarios.restart_embedded(n, say) for _ in range(scale["runs"])]
                )
        if "history" in only:
            figures.update(run_history(modes, scale, postgres, say))
        if "page" in only:  # the page in Chromium, on an embedded server (bench/browser.py)
            sizes = browser.SCALES["smoke" if args.smoke else "full"]
            figures["embedded.page"] = browser.run(**sizes, say=say)
    finally:
        scenarios.stop_static_nginx()
        if postgres is not None:
            postgres.stop()
    results["seconds"] = time.monotonic() - started
    rows = report.rows(results)
    print()
    print(report.table(rows))
    print(f"\nreproduce: {results['command']}")
    if args.out != "-":
        out = Path(args.out)
        report.write(results, rows, out)
        out.with_suffix(".json").write_text(json.dumps(results, indent=1, default=str))
        print(f"wrote {out} and its plots")
    return 0


def run_live(
    mode: str,
    only: set[str],
    scale: dict[str, Any],
    postgres: PostgresServer | None,
    say: scenarios.Say,
) -> dict[str, Any]:
    """The benchmarks that need a running stack of ``mode``."""
    out: dict[str, Any] = {}
    runs = scale["runs"]

    def start(**kw: Any) -> scenarios.Stack:
        if mode == "embedded":
            return Embedded(**kw).start()
        assert postgres is not None
        return Distributed(**kw).start(postgres)

    if "placements" in only:
        say(f"{mode}: placements through HTTP ({scale['users']} users, {runs} runs)")
        per_run = []
        for _ in range(runs):
            stack = start(**({} if mode == "embedded" else {"api": 2, "realtime": 1}))
            try:
                per_run.append(
                    scenarios.placements(
                        stack,
                        users=scale["users"],
                        duration=scale["duration"],
                        procs=scale["procs"],
                    )
                )
            finally:
                stack.stop()
        out[f"{mode}.placements"] = scenarios.median_of(per_run)
    if "event" in only:
        say(f"{mode}: a real event's placements (each a new user from a new address, "
            f"cooldown {scenarios.EVENT_COOLDOWN} s), {runs} runs")  # fmt: skip
        env = {"OPENPLACE_COOLDOWN_SECONDS": scenarios.EVENT_COOLDOWN}
        per_run = []
        for _ in range(runs):
            stack = start(env=env, **({} if mode == "embedded" else {"api": 2, "realtime": 1}))
            try:
                per_run.append(
                    scenarios.event_placements(
                        stack,
                        postgres if mode == "distributed" else None,
                        connections=scale["event_connections"],
                        duration=scale["event_duration"],
                        expected_rate=scale["event_rate"],
                    )
                )
            finally:
                stack.stop()
        out[f"{mode}.event"] = scenarios.median_of(per_run)
    if "fanout" in only:
        # One embedded process may hold ~20,000 open files here: it gets fewer clients.
        clients = scale["embedded_clients" if mode == "embedded" else "clients"]
        say(f"{mode}: fan-out to {clients:,} clients at {scale['rate']}/s")
        per_run = []
        for _ in range(runs):
            stack = start(**({} if mode == "embedded" else {"api": 1, "realtime": 2}))
            try:
                per_run.append(
                    scenarios.fanout(
                        stack,
                        clients=clients,
                        rate=scale["rate"],
                        duration=scale["fan_duration"],
                    )
                )
            finally:
                stack.stop()
        out[f"{mode}.fanout"] = scenarios.median_of(per_run)
    if "catchup" in only:
        say(f"{mode}: catch-up of {scale['behind']:,} placements")
        stack = start(**({} if mode == "embedded" else {"api": 2, "realtime": 1}))
        try:
            out[f"{mode}.catchup"] = scenarios.median_of(
                [scenarios.catch_up(stack, scale["behind"], say)]
                + [scenarios.catch_up(stack, scale["behind"], say) for _ in range(runs - 1)]
            )
        finally:
            stack.stop()
    if "board" in only and mode == "embedded":
        say("embedded: GET /api/board direct")
        stack = start()
        try:
            out["embedded.board"] = scenarios.median_of(
                [
                    {"direct": scenarios.wrk(stack.url + "/api/board", scale["board_duration"])}
                    for _ in range(runs)
                ]
            )
        finally:
            stack.stop()
    if "board" in only and mode == "distributed":
        placing = scale["board_placing"]
        say("distributed: GET /api/board direct, through nginx, and as a static file, "
            f"with a real event's {placing:,} placements/s running")  # fmt: skip
        env = {"OPENPLACE_COOLDOWN_SECONDS": scenarios.EVENT_COOLDOWN}
        stack = start(api=1, realtime=1, env=env)
        assert isinstance(stack, Distributed)
        try:
            out["distributed.board"] = scenarios.median_of(
                [
                    scenarios.board_fetch(stack, scale["board_duration"], placing)
                    for _ in range(runs)
                ]
            )
        finally:
            stack.stop()
    return out


def run_history(
    modes: list[str], scale: dict[str, Any], postgres: PostgresServer | None, say: scenarios.Say
) -> dict[str, Any]:
    """Past boards, keyframes' disk cost and timelapses on a synthetic history of
    ``history_n`` placements, bulk-loaded into each mode's storage."""
    n = scale["history_n"]
    say(f"history: generating {n:,} random placements")
    history = scenarios.SynthHistory.make(n)
    kw: dict[str, Any] = {
        "requests": scale["history_requests"],
        "runs": scale["runs"],
        "video_n": min(n, scale["video_n"]),
        "video_frames": scale["video_frames"],
        "say": say,
    }
    out: dict[str, Any] = {}
    if "embedded" in modes:
        out["embedded.history"] = scenarios.history_embedded(history, **kw)
    if "distributed" in modes:
        assert postgres is not None
        out["distributed.history"] = scenarios.history_distributed(history, postgres, **kw)
    return out


if __name__ == "__main__":
    sys.exit(main())
