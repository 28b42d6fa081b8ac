"""Templates: a picture to keep on the board, what differs from it, and what to fix first.

Pure: no I/O beyond reading the image. A template's pixel ``(i, j)`` (column, row) is
the board's pixel ``(x + i, y + j)``.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from openplace.core.palette import PALETTE

U8 = npt.NDArray[np.uint8]
Mask = npt.NDArray[np.bool_]
Ints = npt.NDArray[np.int64]

OPAQUE = 128  # alpha below this is transparent: the template does not care about that pixel
DAMAGE_RADIUS = 2  # a pixel's neighbourhood: the (2r+1) x (2r+1) square around it


class TemplateError(ValueError):
    """A template that cannot be used: not an image, or not on the board."""


@dataclass(frozen=True, eq=False, slots=True)
class Template:
    """A picture placed at (x, y): ``colors[j, i]`` is the palette index wanted at board
    pixel (x + i, y + j) where ``mask[j, i]`` is True; elsewhere the template is
    transparent. ``off_palette`` counts the opaque pixels whose colour was not exactly
    a palette colour and were mapped to the nearest one."""

    x: int
    y: int
    colors: U8
    mask: Mask
    off_palette: int = 0

    @property
    def width(self) -> int:
        return int(self.colors.shape[1])

    @property
    def height(self) -> int:
        return int(self.colors.shape[0])

    @property
    def wanted(self) -> int:
        """How many pixels the template sets (its opaque pixels)."""
        return int(self.mask.sum())

    def check_fits(self, width: int, height: int) -> None:
        """Raise :class:`TemplateError` unless the template lies inside a board of that size."""
        if self.x < 0 or self.y < 0 or self.x + self.width > width or self.y + self.height > height:
            raise TemplateError(
                f"the template ({self.width}x{self.height} at {self.x},{self.y}) does not fit "
                f"on the {width}x{height} board: it covers x {self.x}..{self.x + self.width - 1}, "
                f"y {self.y}..{self.y + self.height - 1}; the board is x 0..{width - 1}, "
                f"y 0..{height - 1}"
            )

    def region(self, board_colors: U8) -> U8:
        """The board pixels under the template (a view of ``board_colors[y, x]``)."""
        return board_colors[self.y : self.y + self.height, self.x : self.x + self.width]


def palette_rgb(palette: Sequence[str]) -> npt.NDArray[np.int32]:
    """``['#RRGGBB', ...]`` as an (n, 3) array of ints."""
    try:
        return np.array(
            [[int(c[i : i + 2], 16) for i in (1, 3, 5)] for c in palette], dtype=np.int32
        ).reshape(-1, 3)
    except ValueError as exc:
        raise TemplateError(f"a palette colour is not #RRGGBB: {exc}") from None


def from_rgba(
    rgba: U8, at: tuple[int, int] = (0, 0), palette: Sequence[str] = PALETTE
) -> Template:
    """A template of an (h, w, 4) RGBA array: alpha < 128 is transparent, every other
    pixel the nearest palette colour (squared distance in RGB; the lower index on a tie)."""
    if rgba.ndim != 3 or rgba.shape[2] != 4 or rgba.shape[0] == 0 or rgba.shape[1] == 0:
        raise TemplateError(f"expected a non-empty (h, w, 4) RGBA array, got {rgba.shape}")
    if not palette:
        raise TemplateError("the palette is empty")
    mask: Mask = rgba[:, :, 3] >= OPAQUE
    rgb = rgba[:, :, :3][mask].astype(np.int32)  # (n, 3), the opaque pixels
    # Distances for each distinct colour only: a picture has few, a board has a million pixels.
    packed = (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]
    distinct, inverse = np.unique(packed, return_inverse=True)
    unique_rgb = np.stack([(distinct >> 16) & 255, (distinct >> 8) & 255, distinct & 255], 1)
    pal = palette_rgb(palette)
    dist = ((unique_rgb[:, None, :] - pal[None, :, :]) ** 2).sum(axis=2)
    nearest = dist.argmin(axis=1)
    exact = dist.min(axis=1) == 0 if len(distinct) else np.zeros(0, dtype=np.bool_)
    colors = np.zeros(mask.shape, dtype=np.uint8)
    colors[mask] = nearest[inverse.reshape(-1)].astype(np.uint8)
    off = int((~exact[inverse.reshape(-1)]).sum())
    return Template(at[0], at[1], colors, mask, off)


def load(
    source: str | Path | bytes,
    at: tuple[int, int] = (0, 0),
    palette: Sequence[str] = PALETTE,
    board: tuple[int, int] | None = None,
) -> Template:
    """The template in an image file (a path, or the file's bytes) placed at ``at``.

    Every opaque pixel becomes the nearest colour of ``palette``; how many were not an
    exact palette colour is the template's ``off_palette``. With ``board`` (width,
    height), a template that does not fit raises :class:`TemplateError`.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            rgba: U8 = np.asarray(image.convert("RGBA"), dtype=np.uint8)
    except UnidentifiedImageError as exc:
        raise TemplateError(f"not an image: {exc}") from None
    template = from_rgba(rgba, at, palette)
    if board is not None:
        template.check_fits(*board)
    return template


@dataclass(frozen=True, slots=True)
class Fix:
    """A pixel to fix: board (x, y), the colour wanted, the colour there now, and its
    ``damage`` (the wrong template pixels in its neighbourhood, itself included)."""

    x: int
    y: int
    want: int
    have: int
    damage: int


@dataclass(frozen=True, eq=False, slots=True)
class Area:
    """A square of the template (board coordinates ``x .. x+w-1``, ``y .. y+h-1``) and
    how many of its pixels are wrong."""

    x: int
    y: int
    w: int
    h: int
    wrong: int


@dataclass(frozen=True, eq=False, slots=True)
class Diff:
    """Where the board differs from a template: parallel arrays of the differing
    pixels' board coordinates, the wanted and the present colours, in scan order."""

    template: Template
    xs: Ints
    ys: Ints
    want: U8
    have: U8

    @property
    def wanted(self) -> int:
        """The template's opaque pixels."""
        return self.template.wanted

    @property
    def wrong(self) -> int:
        return int(self.xs.size)

    @property
    def correct(self) -> int:
        return self.wanted - self.wrong

    @property
    def complete(self) -> bool:
        return self.wrong == 0

    def pixels(self) -> list[tuple[int, int, int, int]]:
        """The differing pixels as (x, y, want, have)."""
        return list(
            zip(self.xs.tolist(), self.ys.tolist(), self.want.tolist(), self.have.tolist(),
                strict=True)
        )  # fmt: skip

    @property
    def bbox(self) -> tuple[int, int, int, int] | None:
        """The smallest rectangle (x0, y0, x1, y1, inclusive) holding every wrong pixel."""
        if not self.wrong:
            return None
        return int(self.xs.min()), int(self.ys.min()), int(self.xs.max()), int(self.ys.max())

    def areas(self, tile: int = 8, limit: int = 5) -> list[Area]:
        """The template cut into ``tile`` x ``tile`` squares: the ``limit`` with the most
        wrong pixels, worst first (then top to bottom, left to right)."""
        t = self.template
        counts: dict[tuple[int, int], int] = {}
        for i, j in zip(((self.xs - t.x) // tile).tolist(), ((self.ys - t.y) // tile).tolist(),
                        strict=True):  # fmt: skip
            counts[i, j] = counts.get((i, j), 0) + 1
        worst = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0][1], kv[0][0]))[:limit]
        return [
            Area(t.x + i * tile, t.y + j * tile, min(tile, t.width - i * tile),
                 min(tile, t.height - j * tile), n)
            for (i, j), n in worst
        ]  # fmt: skip


def _wrong(template: Template, board_colors: U8) -> Mask:
    region = template.region(board_colors)
    if region.shape != template.colors.shape:
        raise TemplateError(
            f"the board ({board_colors.shape[1]}x{board_colors.shape[0]}) does not hold the "
            f"template ({template.width}x{template.height} at {template.x},{template.y})"
        )
    wrong: Mask = template.mask & (region != template.colors)
    return wrong


def diff(template: Template, board_colors: U8) -> Diff:
    """The pixels where ``board_colors`` (the whole board, ``[y, x]``) differs from
    ``template``; transparent template pixels never differ."""
    wrong = _wrong(template, board_colors)
    js, is_ = np.nonzero(wrong)
    region = template.region(board_colors)
    return Diff(
        template,
        (is_ + template.x).astype(np.int64),
        (js + template.y).astype(np.int64),
        template.colors[js, is_],
        region[js, is_].astype(np.uint8),
    )


def damage(template: Template, board_colors: U8, radius: int = DAMAGE_RADIUS) -> Ints:
    """For each template pixel, the wrong template pixels within ``radius`` of it (a
    (2r+1) x (2r+1) square, clipped to the template, itself included); 0 where the
    pixel is right or transparent."""
    wrong = _wrong(template, board_colors)
    r = radius
    # Box sums through a summed-area table, padded so every window is in range.
    table = np.zeros((wrong.shape[0] + 2 * r + 1, wrong.shape[1] + 2 * r + 1), dtype=np.int64)
    table[1:, 1:] = np.pad(wrong.astype(np.int64), r).cumsum(0).cumsum(1)
    h, w = wrong.shape
    k = 2 * r + 1
    sums = table[k : k + h, k : k + w] - table[:h, k : k + w] - table[k : k + h, :w] + table[:h, :w]
    out: Ints = np.where(wrong, sums, 0)
    return out


def priorities(
    template: Template,
    board_colors: U8,
    *,
    radius: int = DAMAGE_RADIUS,
    seed: int | None = None,
) -> list[Fix]:
    """The differing pixels in the order a bot should fix them: **most damaged first**.

    A pixel's damage is the number of wrong template pixels in the (2r+1) x (2r+1)
    square around it (``radius`` r = 2: 5 x 5), itself included. A griefed area (many
    wrong pixels together) is therefore repaired before a lone stray pixel (damage 1).
    Ties go in scan order (top to bottom, left to right), or, with ``seed``, in a random
    order fixed by the seed (so that several bots on one template pick different pixels).
    """
    scores = damage(template, board_colors, radius)
    js, is_ = np.nonzero(scores)
    if seed is None:
        tiebreak = np.arange(js.size)
    else:
        tiebreak = np.random.default_rng(seed).permutation(js.size)
    order = np.lexsort((tiebreak, -scores[js, is_]))
    region = template.region(board_colors)
    return [
        Fix(int(is_[n]) + template.x, int(js[n]) + template.y, int(template.colors[js[n], is_[n]]),
            int(region[js[n], is_[n]]), int(scores[js[n], is_[n]]))
        for n in order.tolist()
    ]  # fmt: skip
