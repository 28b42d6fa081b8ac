"""``openplace export png`` and ``openplace timelapse``: the history from the command
line, read from the configured mode's durable log (the SQLite file in embedded mode,
PostgreSQL in distributed mode), also while the canvas runs."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

from openplace.config import Settings
from openplace.core.board import Geometry
from openplace.core.timeline import Region, frame_seqs, parse_time
from openplace.history.images import MAX_SCALE, board_png
from openplace.history.timeline import Timeline
from openplace.history.video import FORMATS, Plan, render
from openplace.storage.base import Archive


def archive_for(settings: Settings) -> Archive:
    """The configured mode's archive (not yet opened)."""
    geometry = Geometry(settings.width, settings.height)
    if settings.distributed:
        from openplace.distributed.archive import PostgresArchive

        return PostgresArchive(geometry, database_url=settings.database_url)
    from openplace.embedded import database_path
    from openplace.embedded.archive import SqliteArchive

    return SqliteArchive(database_path(settings), geometry)


def add_arguments(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The history commands, on the ``openplace`` parser."""
    export = sub.add_parser("export", help="export the board (now or at a moment) as a file")
    export.add_argument("format", choices=["png"], help="file format")
    export.add_argument("--out", type=Path, required=True, help="file to write")
    export.add_argument("--at", default=None, help="a seq or an ISO time (default: now)")
    _picture_arguments(export)
    export.set_defaults(func=export_png)

    lapse = sub.add_parser("timelapse", help="render the history as a video")
    lapse.add_argument("--out", type=Path, required=True,
                       help=f"video file: {', '.join(FORMATS)}")  # fmt: skip
    lapse.add_argument("--from", dest="start", default=None,
                       help="seq or ISO time to start after (default: the beginning)")  # fmt: skip
    lapse.add_argument("--to", dest="end", default=None,
                       help="seq or ISO time to end at (default: the newest)")  # fmt: skip
    lapse.add_argument("--fps", type=int, default=30, help="frames per second (default 30)")
    pace = lapse.add_mutually_exclusive_group()
    pace.add_argument("--duration", type=float, default=None,
                      help="video length in seconds (default 10)")  # fmt: skip
    pace.add_argument("--speed", type=float, default=None,
                      help="times real time, e.g. 3600: an hour a second")  # fmt: skip
    _picture_arguments(lapse)
    lapse.set_defaults(func=timelapse)


def _picture_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--region", default=None, help="x,y,w,h (default: the whole board)")
    p.add_argument("--scale", type=int, default=1,
                   help=f"pixels per board pixel, 1..{MAX_SCALE}")  # fmt: skip


def _picture(args: argparse.Namespace, geometry: Geometry) -> tuple[Region, int]:
    region = Region.parse(args.region, geometry) if args.region else Region.whole(geometry)
    if not 1 <= args.scale <= MAX_SCALE:
        raise ValueError(f"--scale must be within 1..{MAX_SCALE}")
    return region, args.scale


async def _seq_of(timeline: Timeline, text: str | None, default: int) -> int:
    """A ``--at``/``--from``/``--to`` value: a seq, or an ISO time (its newest seq)."""
    if text is None:
        return default
    if text.isdigit():
        return min(int(text), default)
    try:
        ts = parse_time(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither a seq nor an ISO time") from None
    return await timeline.seq_at(ts)


def export_png(args: argparse.Namespace, settings: Settings) -> int:
    """Write the board as a PNG."""

    async def run() -> int:
        archive = archive_for(settings)
        await archive.open()
        try:
            timeline = Timeline(archive)
            region, scale = _picture(args, archive.geometry)
            head = await timeline.head()
            seq = await _seq_of(timeline, args.at, head)
            data = await timeline.board(seq)
            args.out.write_bytes(board_png(data, archive.geometry, region, scale))
            print(f"openplace: wrote {args.out} (the board after seq {seq} of {head})")
            return 0
        finally:
            await archive.close()

    return asyncio.run(run())


def timelapse(args: argparse.Namespace, settings: Settings) -> int:
    """Render the history (or a part, or a region of it) as a video."""
    if args.out.suffix.lower() not in FORMATS:
        raise ValueError(f"--out must end in one of {', '.join(FORMATS)}")
    if args.fps < 1 or args.fps > 120:
        raise ValueError("--fps must be within 1..120")

    async def run() -> int:
        archive = archive_for(settings)
        await archive.open()
        try:
            return await _timelapse(args, Timeline(archive))
        finally:
            await archive.close()

    return asyncio.run(run())


async def _timelapse(args: argparse.Namespace, timeline: Timeline) -> int:
    region, scale = _picture(args, timeline.geometry)
    head = await timeline.head()
    after = await _seq_of(timeline, args.start, 0)
    upto = await _seq_of(timeline, args.end, head)
    if upto <= after:
        raise ValueError(f"nothing to show: placements {after + 1}..{upto}")
    if args.speed is not None:
        seqs = await _seqs_by_time(timeline, after, upto, args.fps, args.speed)
    else:
        seqs = frame_seqs(after, upto, round((args.duration or 10.0) * args.fps))
    plan = Plan(after, upto, seqs, args.fps, region, scale)
    started = time.monotonic()
    columns = (*Progress.get_default_columns()[:2], BarColumn(), MofNCompleteColumn(),
               TimeRemainingColumn())  # fmt: skip
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(f"rendering {args.out.name}", total=len(seqs))
        written = await render(timeline, plan, args.out,
                               lambda done, _: bar.update(task, completed=done))  # fmt: skip
    took = time.monotonic() - started
    print(
        f"openplace: wrote {args.out}: {written} frames of placements {after + 1}..{upto} "
        f"({written / args.fps:.1f} s at {args.fps} fps) in {took:.1f} s "
        f"({written / max(took, 1e-9):.0f} frames/s)",
        file=sys.stderr,
    )
    return 0


async def _seqs_by_time(
    timeline: Timeline, after: int, upto: int, fps: int, speed: float
) -> list[int]:
    """One frame per ``speed / fps`` seconds of the history's own time."""
    if speed <= 0:
        raise ValueError("--speed must be positive")
    first = (await timeline.log(after, after + 1, times=True)).times
    last = (await timeline.log(upto - 1, upto, times=True)).times
    assert first is not None and last is not None
    t0, t1 = float(first[0]), float(last[0])
    step = speed / fps
    count = max(1, int((t1 - t0) / step) + 1)
    if count > 100_000:
        raise ValueError(f"--speed {speed} makes {count} frames; speed it up")
    seqs = [min(upto, max(after, await timeline.seq_at(t0 + i * step))) for i in range(count)]
    seqs[-1] = upto
    return seqs
