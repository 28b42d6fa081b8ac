"""``python -m bench.profile``: flame graphs of the placement path under a real event's
load (each placement a new user from a new address, cooldown on), sampled with py-spy
(``pip install py-spy``): an embedded server, and one API process of a distributed stack
(2 API processes, through nginx). Writes ``docs/profile-embedded-event.svg`` and
``docs/profile-api-event.svg``."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
from harness.servers import PostgresServer

from bench.scenarios import EVENT_COOLDOWN
from bench.stack import SECRET, Distributed, Embedded

DOCS = Path(__file__).resolve().parents[1] / "docs"


def profile(url: str, pid: int, out: Path, seconds: float) -> str:
    """Sample ``pid`` while the event load runs against ``url``; the load's result.
    The sampler starts once the server is busy: the load generator signs its tokens
    first, and samples of that wait would be of an idle server."""
    spy = shutil.which("py-spy")
    if spy is None:
        raise SystemExit("py-spy is not installed: pip install py-spy")
    load = subprocess.Popen(
        [sys.executable, "-m", "bench.loadgen", "event", "--url", url, "--secret", SECRET,
         "--users", "200000", "--connections", "64", "--duration", str(seconds + 3),
         "--warmup", "1"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    server = psutil.Process(pid)
    server.cpu_percent()
    while server.cpu_percent(0.25) < 30:
        if load.poll() is not None:
            raise RuntimeError("the load generator stopped before the server got busy")
    time.sleep(1)  # past the warm-up
    subprocess.run(
        [spy, "record", "-p", str(pid), "-o", str(out), "-d", str(int(seconds)), "-r", "200",
         "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    result, _ = load.communicate()
    return result.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--seconds", type=float, default=8)
    args = parser.parse_args(argv)
    env = {"OPENPLACE_COOLDOWN_SECONDS": EVENT_COOLDOWN}
    embedded = Embedded(env=env).start()
    try:
        out = DOCS / "profile-embedded-event.svg"
        assert embedded.proc is not None
        print(f"embedded: {profile(embedded.url, embedded.proc.pid, out, args.seconds)}")
        print(f"wrote {out}")
    finally:
        embedded.stop()
    postgres = PostgresServer().start()
    try:
        stack = Distributed(api=2, realtime=1, env=env).start(postgres)
        try:
            out = DOCS / "profile-api-event.svg"
            pid = stack.cluster.procs["api1"].pid
            print(f"distributed, api1: {profile(stack.url, pid, out, args.seconds)}")
            print(f"wrote {out}")
        finally:
            stack.stop()
    finally:
        postgres.stop()
    print("reproduce: python -m bench.profile")
    return 0


if __name__ == "__main__":
    sys.exit(main())
