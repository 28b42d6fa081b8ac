"""The benchmark table, the plots and docs/benchmarks.md."""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Row:
    figure: str
    mode: str
    value: float
    unit: str
    target: float | None  # None: no target, a ceiling or context figure
    higher_is_better: bool = True
    ceiling: float | None = None

    @property
    def met(self) -> bool | None:
        if self.target is None or self.value != self.value:  # NaN
            return None
        return self.value >= self.target if self.higher_is_better else self.value <= self.target

    @property
    def verdict(self) -> str:
        return {None: "", True: "met", False: "MISSED"}[self.met]


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def rows(results: dict[str, Any]) -> list[Row]:
    f = results["figures"]
    ceiling = f.get("ceiling.redis", {}).get("rps")
    out: list[Row] = []
    for mode in ("embedded", "distributed"):
        p = f.get(f"{mode}.placements")
        if p:
            target = 10_000 if mode == "distributed" else None
            out += [
                Row(
                    "placements/s through HTTP (256 users, cooldown off)",
                    mode,
                    p["placed_per_s"],
                    "/s",
                    target,
                    ceiling=ceiling,
                ),
                Row("placement latency p50", mode, p["p50_ms"], "ms", None, False),
                Row(
                    "placement latency p99",
                    mode,
                    p["p99_ms"],
                    "ms",
                    50 if mode == "distributed" else None,
                    False,
                ),
            ]
        out += event_rows(mode, f.get(f"{mode}.event"), f.get("ceiling.event", {}).get("rps"))
        fo = f.get(f"{mode}.fanout")
        if fo:
            dist = mode == "distributed"
            out += [
                Row("websocket clients held", mode, fo["clients"], "", 20_000 if dist else None),
                Row(
                    "placements/s delivered to every client",
                    mode,
                    fo["delivered_per_client_per_s"],
                    "/s",
                    1000 if dist else None,
                ),
                Row("ack→arrival p50", mode, fo["p50_ms"], "ms", None, False),
                Row("ack→arrival p99", mode, fo["p99_ms"], "ms", 250 if dist else None, False),
                Row(
                    "RSS per idle connection",
                    mode,
                    fo["kib_per_conn"],
                    "KiB",
                    16 if dist else None,
                    False,
                ),
                Row(
                    "clients dropped, short or with gaps",
                    mode,
                    fo["dropped"] + fo["short"] + fo["gaps"],
                    "",
                    0,
                    False,
                ),
                Row(
                    "websocket frames delivered/s, all clients",
                    mode,
                    fo.get("sends_per_s", float("nan")),
                    "/s",
                    None,
                ),
                Row(
                    "fan-out CPU per websocket send",
                    mode,
                    fo["us_per_send"],
                    f"µs ({fo.get('kernel_share_of_send', float('nan')):.0%} in the kernel)",
                    None,
                    False,
                ),
                Row(
                    "CPU of fan-out / load generator",
                    mode,
                    fo["realtime_cpu_share"] * 100,
                    "% / " + f"{fo['loadgen_cpu_share'] * 100:.0f}%",
                    None,
                    False,
                ),
            ]
        c = f.get(f"{mode}.catchup")
        if c:
            out.append(
                Row(
                    f"catch-up of {c['behind']:,} placements",
                    mode,
                    c["catch_up_s"],
                    "s",
                    0.5 if c["behind"] >= 100_000 else None,
                    False,
                )
            )
    eb = f.get("embedded.board")
    if eb:
        out.append(Row("GET /api/board direct", "embedded", eb["direct"]["rps"], "/s", None))
        out.append(Row("GET /api/board p99", "embedded", eb["direct"]["p99_ms"], "ms", None, False))
    b = f.get("distributed.board")
    if b:
        static = b["static"]["rps"]
        placing = b.get("placing")
        if placing:
            out.append(Row("placements/s running during the board fetches (event load)",
                           "distributed", placing["placed_per_s"], "/s", None))  # fmt: skip
        out += [
            Row(
                "GET /api/board direct",
                "distributed",
                b["direct"]["rps"],
                "/s",
                None,
                ceiling=static,
            ),
            Row(
                "GET /api/board through nginx",
                "distributed",
                b["nginx"]["rps"],
                "/s",
                0.8 * static,
                ceiling=static,
            ),
            Row("nginx static file, same bytes (ceiling)", "distributed", static, "/s", None),
            Row(
                "GET /api/board p99: direct / nginx / static",
                "distributed",
                b["direct"]["p99_ms"],
                f"ms / {b['nginx']['p99_ms']:.1f} / {b['static']['p99_ms']:.1f} ms",
                None,
                False,
            ),
        ]
    if ceiling:
        out.append(
            Row("placement script straight on Redis (ceiling)", "redis", ceiling, "/s", None)
        )
    event_ceiling = f.get("ceiling.event", {}).get("rps")
    if event_ceiling:
        out.append(Row("placement script on Redis, cooldowns on (ceiling)", "redis",
                       event_ceiling, "/s", None))  # fmt: skip
    r = f.get("distributed.restore")
    if r:
        big = results["scale"]["placements_n"] >= 1_000_000
        out += [
            Row(
                "restore Redis from persister memory",
                "distributed",
                r["restore_s"],
                "s",
                1.0 if big else None,
                False,
            ),
            Row(
                "cold restore: load PostgreSQL + restore",
                "distributed",
                r["cold_total_s"],
                "s",
                None,
                False,
            ),
        ]
    e = f.get("embedded.restart")
    if e:
        out.append(Row("restart until serving", "embedded", e["restart_s"], "s", None, False))
    for mode in ("embedded", "distributed"):
        out += history_rows(mode, f.get(f"{mode}.history"))
    out += page_rows(f.get("embedded.page"))
    return out


KINDS = ("api", "persister", "realtime", "redis", "postgresql", "nginx", "load generator")


def event_rows(mode: str, ev: dict[str, Any] | None, ceiling: float | None) -> list[Row]:
    """A real event's load: placements/s against the script's ceiling with cooldowns on
    (goal in distributed mode: a quarter of it), latency, and the CPU per placement of
    each kind of process."""
    if not ev:
        return []
    cpu = ev["cpu_us"]
    kinds = [k for k in KINDS if k in cpu]
    goal = 0.25 * ceiling if ceiling and mode == "distributed" else None
    budget: list[Row] = []
    if ceiling:  # what the goal leaves each placement of this machine's CPU, all told
        cores = os.cpu_count() or 1
        budget = [
            Row("CPU µs per placement, event load: all processes", mode,
                sum(cpu[k] for k in kinds), "µs", None, False),
            Row(f"CPU µs a placement may use, all told, at 25% of the ceiling ({cores} cores)",
                mode,
                cores * 1e6 / (0.25 * ceiling), "µs", None, False),
        ]  # fmt: skip
        rest = [k for k in kinds if k not in ("api", "load generator")]
        if rest:
            budget.append(Row(f"CPU µs per placement, event load: {' + '.join(rest)}", mode,
                              sum(cpu[k] for k in rest), "µs", None, False))  # fmt: skip
    return [
        Row("placements/s, event load (a new user and address each, cooldown on)", mode,
            ev["placed_per_s"], "/s", goal, ceiling=ceiling),
        Row("event load latency p50", mode, ev["p50_ms"], "ms", None, False),
        Row("event load latency p99", mode, ev["p99_ms"], "ms", None, False),
        Row(f"CPU µs per placement, event load: {' / '.join(kinds)}", mode, cpu[kinds[0]],
            "/ " + " / ".join(f"{cpu[k]:.0f}" for k in kinds[1:]) if kinds[1:] else "µs",
            None, False),
        *budget,
    ]  # fmt: skip


def history_rows(mode: str, h: dict[str, Any] | None) -> list[Row]:
    """Past boards over a long history, the keyframes' disk cost, timelapses."""
    if not h:
        return []
    n, pb, build, video = h["placements"], h["past_board"], h["build"], h["timelapse"]
    per_m = 1_000_000 / n / 2**20  # bytes in all -> MiB per million placements
    return [
        Row(f"GET /api/board?seq=N p50 ({n / 1e6:g}M history, gzip)", mode, pb["p50_ms"], "ms",
            50, False),
        Row(f"GET /api/board?seq=N p99 ({n / 1e6:g}M history, gzip)", mode, pb["p99_ms"], "ms",
            200, False),
        Row("keyframes on disk per 1M placements", mode, build["keyframes_bytes"] * per_m,
            "MiB", None, False),
        Row("log on disk per 1M placements (with indexes)", mode, build["log_bytes"] * per_m,
            "MiB", None, False),
        Row(f"rollback of {h['rollback']['placements_undone']:,.0f} placements "
            f"({n / 1e6:g}M history, admin API)", mode, h["rollback"]["seconds"], "s", 1.0,
            False),
        Row("timelapse frames/s at 1000x1000 (.mp4)", mode, video["frames_per_s"], "/s", 60),
        Row(f"timelapse {video['video_s']:g} s video ({video['frames']:,} frames) of "
            f"{video['placements'] / 1e6:g}M", mode, video["render_s"], "s",
            video["frames"] / 60, False),
    ]  # fmt: skip


def fmt(v: float, unit: str) -> str:
    if v != v:
        return "n/a"
    if unit in ("/s", "") and abs(v) >= 100:
        return f"{v:,.0f}{unit}"
    if unit == "s":
        return f"{v:.3f} s"
    return f"{v:.1f} {unit}".strip()


def target_text(r: Row) -> str:
    if r.target is None:
        return ""
    return ("≥ " if r.higher_is_better else "≤ ") + fmt(r.target, r.unit)


def table(rs: list[Row]) -> str:
    head = f"{'figure':46} {'mode':12} {'value':>14} {'target':>14} {'of ceiling':>10}  verdict"
    lines = [head, "-" * len(head)]
    for r in rs:
        tgt = target_text(r)
        share = f"{r.value / r.ceiling:.0%}" if r.ceiling else ""
        lines.append(
            f"{r.figure:46} {r.mode:12} {fmt(r.value, r.unit):>14} {tgt:>14} "
            f"{share:>10}  {r.verdict}"
        )
    return "\n".join(lines)


def plot(rs: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targeted = [r for r in rs if r.target]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(targeted) + 1.2))
    ratios: list[float] = []
    for r in targeted:
        assert r.target is not None  # targeted holds the rows with a target
        ratio = r.value / r.target if r.higher_is_better else r.target / max(r.value, 1e-9)
        ratios.append(min(ratio, 3.0))
    labels = [f"{r.figure} ({r.mode})" for r in targeted]
    colors = ["#02BE01" if r.met else "#E50000" for r in targeted]
    ax.barh(labels, ratios, color=colors)
    ax.axvline(1.0, color="#222222", linewidth=1)
    ax.set_xlabel("share of target (1.0 = target; capped at 3)")
    ax.invert_yaxis()
    fig.suptitle("openplace benchmarks against their targets")
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_board(results: dict[str, Any], path: Path) -> bool:
    b = results["figures"].get("distributed.board")
    if not b:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["direct (API)", "through nginx cache", "nginx static file"]
    values = [b["direct"]["rps"], b["nginx"]["rps"], b["static"]["rps"]]
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.bar(names, values, color=["#888888", "#0083C7", "#222222"])
    ax.set_ylabel("requests/s")
    ax.set_title(f"GET /api/board ({b['bytes']:,} bytes)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write(results: dict[str, Any], rs: list[Row], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    targets_png = out.with_name("benchmarks-targets.png")
    board_png = out.with_name("benchmarks-board.png")
    plot(rs, targets_png)
    has_board = plot_board(results, board_png)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    md = [
        "# Benchmarks",
        "",
        "<!-- generated by `python -m bench`; the analysis is in benchmarks-notes.md -->",
        "",
        f"- command: `{results['command']}`",
        f"- machine: {results['machine']}",
        f"- commit: `{commit}`; took {results['seconds']:.0f} s; "
        f"each figure is the median of {results['scale']['runs']} run(s)",
        "",
        "| figure | mode | value | target | share of ceiling | verdict |",
        "|---|---|---:|---:|---:|---|",
    ]
    for r in rs:
        tgt = target_text(r)
        share = f"{r.value / r.ceiling:.0%}" if r.ceiling else ""
        md.append(
            f"| {r.figure} | {r.mode} | {fmt(r.value, r.unit)} | {tgt} | {share} | {r.verdict} |"
        )
    md += ["", f"![targets]({targets_png.name})", ""]
    if has_board:
        md += [f"![board fetch]({board_png.name})", ""]
    md += [
        "What limits each figure, and what would reach the missed targets: see "
        "[benchmarks-notes.md](benchmarks-notes.md).",
        "",
    ]
    out.write_text("\n".join(md))


def page_rows(p: dict[str, Any] | None) -> list[Row]:
    """The page in Chromium (bench/browser.py): its CPU, frames and long tasks at rest and
    under placements, and whether its board ends equal to the server's."""
    if not p:
        return []
    rest, load, rate = p["rest"], p["load"], f"{p['rate']:,}"
    return [
        Row("page CPU at rest (renderer + GPU)", "chromium", rest["cpu_pct"], "% core", 2, False),
        Row(f"page CPU at {rate} placements/s", "chromium", load["cpu_pct"], "% core", None,
            False),
        Row("page board frames drawn/s at rest", "chromium", rest["board_fps"], "/s", 0, False),
        Row(f"page board frames drawn/s at {rate} placements/s", "chromium", load["board_fps"],
            "/s", None),
        Row("page long tasks (at rest, under load)", "chromium",
            rest["long_tasks"] + load["long_tasks"], "", 0, False),
        Row("page board bytes unlike the server's after", "chromium", p["board_diff_bytes"], "",
            0, False),
    ]  # fmt: skip
