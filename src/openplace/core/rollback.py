"""Rollback: what undoing some users' placements changes. Pure: no I/O.

The rule: the board becomes what it would be if the undone placements had never been
made. A pixel whose newest placement is someone else's is left as it is; one whose
newest placement is undone returns to the colour of its newest placement that is not
undone (the blank colour 0 if there is none). The archives read, for each pixel that an
undone placement touched, its newest placement and that colour, in one consistent view
of the log (``Archive.undo_plan``); :func:`undo_changes` decides.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import NamedTuple

BLANK = 0


class PixelFacts(NamedTuple):
    """What the log says of one pixel up to the plan's head."""

    pixel: int
    newest_seq: int
    newest_color: int
    newest_user: str
    restore: int | None  # colour of its newest placement that is not undone (None: none)


def undone(user: str, seq: int, users: Collection[str], after: int) -> bool:
    """Whether a placement is one of those undone (``users``' placements after ``after``)."""
    return seq > after and user in users


def undo_changes(
    facts: Iterable[PixelFacts], users: Collection[str], after: int
) -> list[tuple[int, int]]:
    """The ``(index, color)`` placements that undo the placements, pixel by pixel, in
    index order (only pixels whose colour changes)."""
    changes = []
    for f in facts:
        if not undone(f.newest_user, f.newest_seq, users, after):
            continue  # someone else placed on it later: theirs stands
        color = BLANK if f.restore is None else f.restore
        if color != f.newest_color:
            changes.append((f.pixel, color))
    changes.sort()
    return changes
