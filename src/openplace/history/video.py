"""Timelapse videos: frames from :meth:`Timeline.frames`, encoded by FFmpeg through PyAV.

The container and codec follow the file's extension: ``.mp4`` (H.264), ``.webm`` (VP9)
or ``.gif``. Pixel art is scaled by whole pixels before encoding, so it stays sharp.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from openplace.core.timeline import PALETTE_RGB, Region, crop_scale, packed_rgb, unpack
from openplace.history.timeline import Timeline

FORMATS = {
    ".mp4": ("libx264", "yuv420p", {"preset": "veryfast", "crf": "18", "tune": "animation"}),
    ".webm": ("libvpx-vp9", "yuv420p", {"deadline": "realtime", "cpu-used": "8", "crf": "32",
                                        "b": "0", "row-mt": "1"}),
    ".gif": ("gif", "pal8", {}),
}  # fmt: skip

Progress = Callable[[int, int], None]

# The palette as PyAV's pal8 frames take it: 256 ARGB entries.
_ARGB = np.zeros((256, 4), dtype=np.uint8)
_ARGB[:, 0] = 255
_ARGB[: len(PALETTE_RGB), 1:] = PALETTE_RGB


@dataclass(frozen=True, slots=True)
class Plan:
    """What a timelapse shows: the board after each of ``seqs`` (increasing, within
    ``after+1 .. upto``), one frame each."""

    after: int
    upto: int
    seqs: list[int]
    fps: int
    region: Region
    scale: int = 1


def _even(n: int) -> int:
    return n + (n & 1)


async def render(
    timeline: Timeline, plan: Plan, out: Path, progress: Progress | None = None
) -> int:
    """Write the timelapse to ``out``; returns the number of frames written."""
    suffix = out.suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"unknown video format {suffix!r}: use one of {', '.join(FORMATS)}")
    codec, pix_fmt, options = FORMATS[suffix]
    width, height = plan.region.w * plan.scale, plan.region.h * plan.scale
    # H.264 and VP9 in 4:2:0 want even sizes: pad with the board's white.
    padded = (_even(width), _even(height)) if pix_fmt == "yuv420p" else (width, height)
    written = 0
    with av.open(str(out), mode="w") as container:
        stream = container.add_stream(codec, rate=plan.fps, options=dict(options))
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height = padded
        stream.pix_fmt = pix_fmt
        stream.time_base = Fraction(1, plan.fps)
        canvas = np.full((padded[1], padded[0], 3), 255, dtype=np.uint8)
        async for _, packed in timeline.frames(plan.after, plan.seqs):
            if pix_fmt == "pal8":  # GIF: the board's own 16 colours, exactly
                pixels = crop_scale(unpack(packed, timeline.geometry), plan.region, plan.scale)
                image = (np.ascontiguousarray(pixels), _ARGB)
                # PyAV's stubs lack the (image, palette) pair that pal8 takes.
                frame = av.VideoFrame.from_ndarray(image, "pal8")  # type: ignore[arg-type]
            else:
                rgb = packed_rgb(packed, timeline.geometry)
                canvas[:height, :width] = crop_scale(rgb, plan.region, plan.scale)
                frame = av.VideoFrame.from_ndarray(canvas, format="rgb24")
            frame.pts = written
            for packet in stream.encode(frame):
                container.mux(packet)
            written += 1
            if progress is not None:
                progress(written, len(plan.seqs))
        for packet in stream.encode():
            container.mux(packet)
    return written
