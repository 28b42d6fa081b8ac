"""The benchmark command keeps working: a run at tiny sizes (no figures asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_smoke_run_prints_every_figure_and_writes_the_report(tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for figure in ("placements/s through HTTP", "ack→arrival p99", "RSS per idle connection",
                   "GET /api/board through nginx", "placement script straight on Redis",
                   "restore Redis from persister memory", "restart until serving",
                   "catch-up of"):  # fmt: skip
        assert figure in run.stdout, figure
    assert "reproduce: python -m bench --smoke" in run.stdout
    report = out.read_text()
    assert "| figure |" in report and "machine:" in report
    assert (tmp_path / "benchmarks-targets.png").stat().st_size > 1000
    assert (tmp_path / "benchmarks-board.png").stat().st_size > 1000
