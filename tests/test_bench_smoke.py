"""The benchmark command keeps working: a run at tiny sizes (no figures asserted) that
leaves nothing in the temp dir."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_smoke_run_prints_every_figure_and_writes_the_report(tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    # A temp dir of its own (open to PostgreSQL's user, as /tmp is): it must stay empty.
    tmp = Path(tempfile.mkdtemp(prefix="bench-tmp-"))
    tmp.chmod(0o1777)
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "TMPDIR": str(tmp)},
    )  # fmt: skip
    left = sorted(p.name for p in tmp.iterdir())
    shutil.rmtree(tmp, ignore_errors=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert left == [], f"the benchmarks left {left} in the temp dir"
    for figure in ("placements/s through HTTP", "ack→arrival p99", "RSS per idle connection",
                   "GET /api/board through nginx", "placement script straight on Redis",
                   "restore Redis from persister memory", "restart until serving",
                   "catch-up of", "GET /api/board?seq=N p99", "keyframes on disk per 1M",
                   "timelapse frames/s", "rollback of", "event load (a new user",
                   "CPU µs per placement, event load", "cooldowns on (ceiling)"):  # fmt: skip
        assert figure in run.stdout, figure
    assert "reproduce: python -m bench --smoke" in run.stdout
    report = out.read_text()
    assert "| figure |" in report and "machine:" in report
    assert (tmp_path / "benchmarks-targets.png").stat().st_size > 1000
    assert (tmp_path / "benchmarks-board.png").stat().st_size > 1000
