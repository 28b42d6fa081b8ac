"""The page in a browser: what it costs at rest and while placements pour in.

Starts an embedded server, opens the page in headless Chromium (the system's, as the
browser tests do) and measures two windows:

- at rest: nothing placed;
- under load: placements at ``rate``/s from ``python -m bench.loadgen place --rate``.

For each: the CPU of Chromium's processes as % of one core (renderer + GPU, and all of
them; user + system time from /proc over the window), how many animation frames drew
the board, style recalculations and layouts a second (the page's own counters, through
the DevTools protocol), and long tasks (PerformanceObserver 'longtask'). After the load,
whether the page's board equals the server's (GET /api/board).

python -m bench.browser                      # 10 s at rest, 10 s at 1,000 placements/s
python -m bench.browser --rest 3 --load 3 --rate 100
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import shlex
import sys
import time
from collections.abc import Callable
from typing import Any

import psutil
from harness.browser import CHROMIUM, CHROMIUM_ARGS
from playwright.sync_api import CDPSession, Page, sync_playwright

from bench.scenarios import collect, loadgen
from bench.stack import SECRET, Embedded
from openplace.client import Canvas

# Sizes for python -m bench (its --smoke: seconds, the figures mean little).
SCALES: dict[str, dict[str, float]] = {
    "full": {"rest": 10, "load": 10, "rate": 1000, "settle": 3},
    "smoke": {"rest": 1, "load": 1, "rate": 100, "settle": 0.5},
}


# Counts, without a requestAnimationFrame loop of its own (which would keep the page
# busy): the animation frames in which something was drawn on the board's canvas (one
# document.timeline time a frame), and the long tasks.
PROBE = """
(() => {
  const probe = { frames: 0, calls: 0, last: null, longTasks: 0, longMs: 0 };
  window.__benchProbe = probe;
  try { localStorage.setItem("openplace.hinted", "1"); } catch (e) {}
  const proto = CanvasRenderingContext2D.prototype;
  for (const name of ["drawImage", "putImageData", "fillRect"]) {
    const orig = proto[name];
    proto[name] = function (...args) {
      if (this.canvas && this.canvas.id === "board") {
        probe.calls++;
        const t = document.timeline.currentTime;
        if (t !== probe.last) { probe.last = t; probe.frames++; }
      }
      return orig.apply(this, args);
    };
  }
  try {
    new PerformanceObserver((list) => {
      for (const e of list.getEntries()) { probe.longTasks++; probe.longMs += e.duration; }
    }).observe({ type: "longtask", buffered: true });
  } catch (e) {}
})();
"""

# The probe's counts, and the page's own count of frames that drew the whole view or only
# changed pixels (window.openplace.draws, where the page has it).
PROBE_NOW = """() => {
  const d = (window.openplace && window.openplace.draws) || { full: NaN, pixels: NaN };
  return { ...window.__benchProbe, full: d.full, pixels: d.pixels };
}"""

# The page's board, packed as the server packs it (two pixels a byte), in base64.
PAGE_BOARD = """async () => {
  const b = await (await fetch("/api/canvas")).json();
  const w = b.width, h = b.height, op = window.openplace;
  const out = new Uint8Array(w * h / 2);
  for (let i = 0; i < w * h; i += 2) {
    const x = i % w, y = (i - x) / w;
    out[i >> 1] = (op.livePixel(x, y) << 4) | op.livePixel(x + 1, y);
  }
  let s = "";
  for (let i = 0; i < out.length; i += 0x8000) {
    s += String.fromCharCode.apply(null, out.subarray(i, i + 0x8000));
  }
  return { seq: op.lastSeq, board: btoa(s) };
}"""


def chromium_procs() -> dict[int, tuple[str, psutil.Process]]:
    """Chromium's processes started under this one, by pid: (kind, process)."""
    out: dict[int, tuple[str, psutil.Process]] = {}
    for p in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            cmd = p.cmdline()
            if not cmd or "chrom" not in os.path.basename(cmd[0]):
                continue
            kind = next((a[7:] for a in cmd if a.startswith("--type=")), "browser")
            out[p.pid] = (kind, p)
    return out


def cpu_by_kind() -> dict[int, tuple[str, float]]:
    out: dict[int, tuple[str, float]] = {}
    for pid, (kind, p) in chromium_procs().items():
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            out[pid] = (kind, t.user + t.system)
    return out


def metrics(cdp: CDPSession) -> dict[str, float]:
    got = cdp.send("Performance.getMetrics")
    return {m["name"]: float(m["value"]) for m in got["metrics"]}


def window(
    page: Page, cdp: CDPSession, seconds: float, during: Callable[[], None]
) -> dict[str, Any]:
    """Measure over ``seconds`` while ``during`` runs (it must return within them)."""
    probe0 = page.evaluate(PROBE_NOW)
    m0 = metrics(cdp)
    cpu0 = cpu_by_kind()
    t0 = time.monotonic()
    during()
    left = seconds - (time.monotonic() - t0)
    if left > 0:
        time.sleep(left)
    cpu1 = cpu_by_kind()
    elapsed = time.monotonic() - t0
    m1 = metrics(cdp)
    probe1 = page.evaluate(PROBE_NOW)
    used: dict[str, float] = {}
    for pid, (kind, t) in cpu1.items():
        before = cpu0.get(pid, (kind, 0.0))[1]
        used[kind] = used.get(kind, 0.0) + t - before
    focus = used.get("renderer", 0.0) + used.get("gpu-process", 0.0)

    def rate(name: str) -> float:
        return (m1.get(name, 0.0) - m0.get(name, 0.0)) / elapsed

    return {
        "seconds": elapsed,
        "cpu_pct": focus / elapsed * 100,  # renderer + GPU, % of one core
        "cpu_all_pct": sum(used.values()) / elapsed * 100,
        "cpu_by_kind_pct": {k: v / elapsed * 100 for k, v in sorted(used.items())},
        "board_fps": (probe1["frames"] - probe0["frames"]) / elapsed,
        "board_calls_per_s": (probe1["calls"] - probe0["calls"]) / elapsed,
        # Of those frames, the ones that drew the whole view (NaN: the page does not say).
        "full_draws_per_s": (probe1["full"] - probe0["full"]) / elapsed,
        "style_recalcs_per_s": rate("RecalcStyleCount"),
        "layouts_per_s": rate("LayoutCount"),
        "main_thread_busy_pct": rate("TaskDuration") * 100,
        "long_tasks": probe1["longTasks"] - probe0["longTasks"],
        "long_task_ms": probe1["longMs"] - probe0["longMs"],
    }


def server_board(url: str) -> tuple[int, bytes]:
    """The server's seq and board (the bytes of ``GET /api/board``), through the client."""
    with Canvas(url, timeout=30) as canvas:
        board = canvas.board()
    return board.seq, board.packed()


def run(
    *,
    rest: float = 10,
    load: float = 10,
    rate: float = 1000,
    settle: float = 3,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The page at rest for ``rest`` s, then under ``rate`` placements/s for ``load`` s.
    ``settle``: seconds from the page going live to the measuring (its first board drawn,
    its live dot's pulse over)."""
    rate = int(rate)
    stack = Embedded().start()
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                ctx = browser.new_context(viewport={"width": 1280, "height": 800})
                page = ctx.new_page()
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                page.add_init_script(PROBE)
                page.goto(stack.url + "/")
                page.wait_for_function(
                    "() => window.openplace && window.openplace.connected", timeout=30_000
                )
                cdp = ctx.new_cdp_session(page)
                cdp.send("Performance.enable")
                time.sleep(settle)
                say(f"page: at rest for {rest:g} s")
                at_rest = window(page, cdp, rest, lambda: None)
                say(f"page: {rate:,} placements/s for {load:g} s")
                placed: dict[str, Any] = {}

                def place() -> None:
                    gen = loadgen(
                        "place", "--url", stack.url, "--secret", SECRET,
                        "--users", str(max(4, rate // 10)), "--duration", str(load),
                        "--warmup", "0", "--rate", str(rate),
                    )  # fmt: skip
                    placed.update(collect(gen, timeout=load + 60))

                under_load = window(page, cdp, load, place)
                under_load["placed_per_s"] = placed["placed_per_s"]
                seq, server = server_board(stack.url)
                page.wait_for_function(f"() => window.openplace.lastSeq >= {seq}", timeout=30_000)
                shown = page.evaluate(PAGE_BOARD)
                board = base64.b64decode(shown["board"])
                diff = sum(a != b for a, b in zip(board, server, strict=False))
                diff += abs(len(board) - len(server))
                ctx.close()
            finally:
                browser.close()
    finally:
        stack.stop()
    if errors:
        raise RuntimeError(f"uncaught errors in the page: {errors}")
    return {
        "rest": at_rest,
        "load": under_load,
        "rate": rate,
        "seq": seq,
        "board_equal": diff == 0 and shown["seq"] == seq,
        "board_diff_bytes": diff,
        "chromium": _chromium_version(),
    }


def _chromium_version() -> str:
    with contextlib.suppress(OSError, ValueError):
        import subprocess

        out = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip()
    return "?"


def table(fig: dict[str, Any]) -> str:
    rows = [
        ("CPU, renderer + GPU (% of a core)", "cpu_pct", "{:.1f}"),
        ("CPU, all Chromium processes", "cpu_all_pct", "{:.1f}"),
        ("board frames drawn /s", "board_fps", "{:.1f}"),
        ("  of which the whole view /s", "full_draws_per_s", "{:.1f}"),
        ("style recalculations /s", "style_recalcs_per_s", "{:.1f}"),
        ("layouts /s", "layouts_per_s", "{:.1f}"),
        ("main thread busy (%)", "main_thread_busy_pct", "{:.1f}"),
        ("long tasks", "long_tasks", "{:d}"),
    ]
    loaded = f"{fig['rate']:,}/s"
    head = f"{'':36} {'at rest':>10} {loaded:>10}"
    lines = [head]
    for label, key, fmt in rows:
        a, b = fig["rest"][key], fig["load"][key]
        lines.append(f"{label:36} {fmt.format(a):>10} {fmt.format(b):>10}")
    placed, equal = fig["load"]["placed_per_s"], fig["board_equal"]
    lines.append(f"{'placements/s acknowledged':36} {'':>10} {placed:>10.0f}")
    lines.append(f"{'board equal to the server after':36} {'':>10} {equal!s:>10}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.browser",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rest", type=float, default=10, help="seconds at rest")
    parser.add_argument("--load", type=float, default=10, help="seconds under load")
    parser.add_argument("--rate", type=int, default=1000, help="placements/s under load")
    parser.add_argument(
        "--settle", type=float, default=3, help="seconds from the page going live to measuring"
    )
    args = parser.parse_args(argv)
    fig = run(rest=args.rest, load=args.load, rate=args.rate, settle=args.settle)
    print()
    print(table(fig))
    by = " ".join(f"{k} {v:.1f}" for k, v in fig["rest"]["cpu_by_kind_pct"].items())
    print(f"\nat rest, % of a core by process: {by}")
    by = " ".join(f"{k} {v:.1f}" for k, v in fig["load"]["cpu_by_kind_pct"].items())
    print(f"under load, % of a core by process: {by}")
    print(f"{fig['chromium']}, {os.cpu_count()} cores")
    argv_ = argv if argv is not None else sys.argv[1:]
    print("reproduce: python -m bench.browser " + " ".join(shlex.quote(a) for a in argv_))
    return 0 if fig["board_equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
