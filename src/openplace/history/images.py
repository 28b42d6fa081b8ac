"""PNG pictures of the board and of heatmaps, encoded by Pillow."""

from __future__ import annotations

import io

import numpy as np
import numpy.typing as npt
from PIL import Image

from openplace.core.board import Geometry
from openplace.core.timeline import PALETTE_RGB, Region, crop_scale, heat_rgb, unpack

MAX_SCALE = 16


def board_png(packed: bytes, geometry: Geometry, region: Region, scale: int = 1) -> bytes:
    """The board (or a region of it, each pixel ``scale`` x ``scale``) as a PNG with a
    16-colour palette: small, and every pixel exactly a palette colour."""
    pixels = np.ascontiguousarray(crop_scale(unpack(packed, geometry), region, scale))
    image = Image.fromarray(pixels, mode="P")
    image.putpalette(PALETTE_RGB.tobytes())
    return _png(image)


def heatmap_png(counts: npt.NDArray[np.int64], region: Region, scale: int = 1) -> bytes:
    """Placements per pixel as a PNG (log scale, inferno; never placed: black)."""
    rgb = np.ascontiguousarray(crop_scale(heat_rgb(counts), region, scale))
    return _png(Image.fromarray(rgb, mode="RGB"))


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=False, compress_level=6)
    return out.getvalue()
