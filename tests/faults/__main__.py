"""``python -m tests.faults --minutes 10 --seed 1``: the soak. Prints the figures; exits 1 on
any violation, or if the stack did not stay whole (a problem)."""

from __future__ import annotations

import argparse
import asyncio
import sys

from tests.faults.nemesis import KINDS
from tests.faults.run import Config, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults", description=__doc__)
    parser.add_argument(
        "--minutes",
        type=float,
        default=10.0,
        help="how long to keep injecting faults (at least one of each kind)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--writers", type=int, default=8, help="users placing at once")
    parser.add_argument("--clients", type=int, default=4, help="websocket clients")
    parser.add_argument("--width", type=int, default=1000)
    parser.add_argument("--height", type=int, default=1000)
    parser.add_argument(
        "--gap",
        type=float,
        nargs=2,
        default=(1.0, 4.0),
        metavar=("MIN", "MAX"),
        help="seconds of quiet before each fault (uniform, seeded)",
    )
    parser.add_argument(
        "--pause",
        type=float,
        nargs=2,
        default=(1.0, 2.0),
        metavar=("MIN", "MAX"),
        help="seconds a SIGSTOP of Redis or PostgreSQL lasts (uniform, seeded)",
    )
    parser.add_argument(
        "--no-keep-logs",
        dest="keep_logs",
        action="store_false",
        help="remove the cluster's logs even when the check fails",
    )
    parser.add_argument(
        "--kinds",
        default=",".join(KINDS),
        help=f"fault kinds to inject, comma-separated (default: all of {', '.join(KINDS)})",
    )
    args = parser.parse_args(argv)  # fmt: skip
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    unknown = set(kinds) - set(KINDS)
    if unknown or not kinds:
        parser.error(f"unknown fault kinds: {', '.join(sorted(unknown)) or '(none given)'}")
    config = Config(
        seed=args.seed,
        fault_seconds=args.minutes * 60,
        writers=args.writers,
        clients=args.clients,
        width=args.width,
        height=args.height,
        gap=(args.gap[0], args.gap[1]),
        keep_logs=args.keep_logs,
        kinds=kinds,
        pause=(args.pause[0], args.pause[1]),
        say=lambda m: print(m, flush=True),
    )
    report = asyncio.run(run(config))
    print(report.table(), flush=True)
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
