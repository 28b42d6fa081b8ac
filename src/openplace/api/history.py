"""HTTP handlers for the canvas's past: the board at a seq or time, log ranges, PNG
pictures, heatmaps and a pixel's history.

Everything here reads the durable history (:class:`~openplace.history.timeline.Timeline`):
committed placements only. A past moment never changes, so its answers are cacheable
forever (``immutable``); CPU-heavy work (PNG encoding, gzip, heat maps) runs in a thread,
off the event loop that answers placements.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import Request
from starlette.responses import Response

from openplace.api.errors import APIError
from openplace.api.json import JSONResponse
from openplace.api.params import (
    MAX_SIZE,
    accepts_gzip,
    coordinate,
    matches_etag,
    query_number,
    query_value,
)
from openplace.api.placing import iso
from openplace.core.board import InvalidPixel
from openplace.core.placement import StoreUnavailable
from openplace.core.timeline import HistoryError, Region, encode_history, parse_time
from openplace.history.images import MAX_SCALE, board_png, heatmap_png
from openplace.history.timeline import Timeline
from openplace.state import state_of

T = TypeVar("T")
IMMUTABLE = "public, max-age=31536000, immutable"
PIXEL_HISTORY_MAX = 1000
# Longer than a store read's: a heatmap of a long history reads millions of log rows.
READ_TIMEOUT_SECONDS = 30.0


async def read_history(request: Request, reading: Awaitable[T]) -> T:
    """A history read: 404 for a moment not (yet) in it, 503 while it cannot be read."""
    try:
        return await asyncio.wait_for(reading, READ_TIMEOUT_SECONDS)
    except HistoryError as exc:
        raise APIError(404, "not_found", str(exc)) from exc
    except (StoreUnavailable, TimeoutError, OSError) as exc:
        raise APIError(
            503, "unavailable", "the history cannot be read now; try again",
            headers={"Retry-After": "1"},
        ) from exc  # fmt: skip


async def moment(request: Request, timeline: Timeline) -> tuple[int, bool] | None:
    """The seq that ``?seq=`` or ``?at=`` names (both: the earlier of the two), and
    whether its answer is final (a time after the newest placement may still gain
    placements); ``None`` if neither."""
    seq = query_number(request, "seq", "bad_seq")
    at = query_value(request, "at")
    if seq is not None:
        await read_history(request, timeline.check_seq(seq))
    if at is None:
        return None if seq is None else (seq, True)
    try:
        ts = parse_time(at)
    except ValueError as exc:
        raise APIError(400, "bad_time", "at must be an ISO 8601 time, e.g. "
                       "2026-11-26T06:50:17.396Z") from exc  # fmt: skip
    head, head_ts = await read_history(request, timeline.archive.committed())
    found = await read_history(request, timeline.seq_at(ts))
    final = head_ts is not None and ts < head_ts and found < head
    if seq is not None and seq <= found:
        return seq, True
    return found, final


def region_and_scale(request: Request, timeline: Timeline) -> tuple[Region, int]:
    """The region ``x, y, w, h`` (``x``, ``y`` default 0, ``w``, ``h`` to the board's
    edge; cut at the edge) and ``scale`` (1..16)."""
    geometry = timeline.geometry
    x, y, w, h = (query_number(request, n, "bad_region", MAX_SIZE) for n in ("x", "y", "w", "h"))
    x, y = x or 0, y or 0
    if x >= geometry.width or y >= geometry.height:
        raise APIError(400, "bad_region", f"x, y must be on the {geometry.width}x"
                       f"{geometry.height} board")  # fmt: skip
    if w == 0 or h == 0:
        raise APIError(400, "bad_region", "w and h must be at least 1")
    room_w, room_h = geometry.width - x, geometry.height - y
    region = Region(x, y, room_w if w is None else min(w, room_w),
                    room_h if h is None else min(h, room_h))  # fmt: skip
    scale = query_number(request, "scale", "bad_scale")
    if scale is None:
        scale = 1
    if not 1 <= scale <= MAX_SCALE:
        raise APIError(400, "bad_scale", f"scale must be within 1..{MAX_SCALE}")
    if region.w * region.h * scale * scale > 64_000_000:
        raise APIError(400, "bad_scale", "the picture would be over 64 megapixels")
    return region, scale


def _region_tag(region: Region, scale: int) -> str:
    # No commas: If-None-Match lists tags separated by them.
    return f"{region.x}.{region.y}.{region.w}.{region.h}x{scale}"


def _not_modified(request: Request, etag: str, headers: dict[str, str]) -> Response | None:
    return Response(status_code=304, headers=headers) if matches_etag(request, etag) else None


def _gzip_wanted(request: Request) -> bool:
    return accepts_gzip(request.headers.get("accept-encoding", ""))


# -- handlers ------------------------------------------------------------------------


async def past_board(request: Request, seq: int, final: bool) -> Response:
    """``GET /api/board?seq=N`` or ``?at=T``: the packed board after placement N."""
    state = state_of(request)
    timeline = state.timeline
    gz = _gzip_wanted(request)
    etag = f'"past-{seq}{"-gz" if gz else ""}"'
    headers = {
        "ETag": etag,
        "X-Seq": str(seq),
        "Vary": "Accept-Encoding",
        "Cache-Control": IMMUTABLE if final else "no-cache",
    }
    if (answer := _not_modified(request, etag, headers)) is not None:
        return answer
    data = await read_history(request, timeline.board(seq))
    if gz:
        headers["Content-Encoding"] = "gzip"
        data = await asyncio.to_thread(gzip.compress, data, 6, mtime=0)
    return Response(data, media_type="application/octet-stream", headers=headers)


async def board_png_endpoint(request: Request) -> Response:
    """``GET /api/board.png``: now, or ``?seq=`` / ``?at=``; ``scale``; a region."""
    state = state_of(request)
    timeline = state.timeline
    region, scale = region_and_scale(request, timeline)
    found = await moment(request, timeline)
    if found is None:
        cached = await state.board_cache.get()
        seq, data, final = cached.seq, cached.data, False
        tag = f"{cached.board_id}-{seq}"
    else:
        seq, final = found
        data, tag = b"", f"past-{seq}"
    etag = f'"{tag}-{_region_tag(region, scale)}"'
    max_age = state.settings.board_max_age_seconds
    headers = {
        "ETag": etag,
        "X-Seq": str(seq),
        "Cache-Control": IMMUTABLE if final else f"public, max-age={max_age}",
    }
    if (answer := _not_modified(request, etag, headers)) is not None:
        return answer
    if found is not None:
        data = await read_history(request, timeline.board(seq))
    png = await asyncio.to_thread(board_png, data, timeline.geometry, region, scale)
    return Response(png, media_type="image/png", headers=headers)


async def _range(request: Request, timeline: Timeline) -> tuple[int, int, bool]:
    """``from``/``to`` (seqs, inclusive; default the whole history; ``to`` below
    ``from``: none) as ``after, upto`` clipped to the history, and whether the range
    is final."""
    first = query_number(request, "from", "bad_range")
    last = query_number(request, "to", "bad_range")
    head, _ = await read_history(request, timeline.archive.committed())
    first = 1 if first is None else max(first, 1)
    final = last is not None and last <= head
    upto = head if last is None else min(last, head)
    if first > head + 1:
        raise APIError(404, "not_found", f"from {first} is beyond the history (1..{head})")
    return first - 1, max(upto, first - 1), final  # to below from: nothing


async def history(request: Request) -> Response:
    """``GET /api/history?from=A&to=B``: the placements A..B as records and times
    (binary, :func:`~openplace.core.timeline.encode_history`), at most
    ``history_max_records`` of them; ``X-Next`` names where to continue."""
    state = state_of(request)
    timeline = state.timeline
    after, upto, final = await _range(request, timeline)
    limit = state.settings.history_max_records
    headers: dict[str, str] = {"Vary": "Accept-Encoding"}
    if upto - after > limit:
        upto = after + limit
        headers["X-Next"] = str(upto + 1)
    log = await read_history(request, timeline.log(after, upto, times=True))
    headers["X-Seq"] = str(upto)
    headers["Cache-Control"] = IMMUTABLE if final or "X-Next" in headers else "no-cache"
    body = encode_history(log)
    if _gzip_wanted(request):
        headers["Content-Encoding"] = "gzip"
        body = await asyncio.to_thread(gzip.compress, body, 6, mtime=0)
    return Response(body, media_type="application/octet-stream", headers=headers)


async def heatmap_endpoint(request: Request) -> Response:
    """``GET /api/heatmap.png?from=&to=``: placements per pixel, log scale."""
    timeline = state_of(request).timeline
    region, scale = region_and_scale(request, timeline)
    after, upto, final = await _range(request, timeline)
    etag = f'"heat-{after}-{upto}-{_region_tag(region, scale)}"'
    headers = {
        "ETag": etag,
        "X-Seq": str(upto),
        "Cache-Control": IMMUTABLE if final else "public, max-age=10",
    }
    if (answer := _not_modified(request, etag, headers)) is not None:
        return answer
    counts = await read_history(request, timeline.heat(after, upto))
    png = await asyncio.to_thread(heatmap_png, counts, region, scale)
    return Response(png, media_type="image/png", headers=headers)


async def pixel_history(request: Request) -> Response:
    """``GET /api/pixel/history?x=&y=&limit=``: who placed what there, newest first."""
    timeline = state_of(request).timeline
    x, y = coordinate(request, "x"), coordinate(request, "y")
    try:
        index = timeline.geometry.index(x, y)
    except InvalidPixel as exc:
        raise APIError(400, "bad_coordinates", str(exc)) from exc
    limit = query_number(request, "limit", "bad_request")
    limit = 20 if limit is None else limit
    if not 1 <= limit <= PIXEL_HISTORY_MAX:
        raise APIError(400, "bad_request", f"limit must be within 1..{PIXEL_HISTORY_MAX}")
    rows = await read_history(request, timeline.archive.pixel_history(index, limit))
    return JSONResponse(
        {
            "x": x,
            "y": y,
            "placements": [
                {"seq": r.seq, "color": r.color, "user_id": r.user_id, "placed_at": iso(r.ts)}
                for r in rows
            ],
        },
        headers={"Cache-Control": "no-cache"},
    )
