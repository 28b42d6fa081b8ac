"""The live stream's rules without I/O (docs/protocol.md, "client algorithm"): a board
and the seq it is at, batch frames applied in order exactly once, a gap or a ``resync``
noticed. :class:`~openplace.client.LiveBoard` does the I/O around it."""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from openplace.client.models import Colors, Placement, Policy, Snapshot
from openplace.core.wire import decode_frame


class Gap(Exception):
    """A frame that starts after the next seq: placements were lost; resume with
    ``since``."""

    def __init__(self, have: int, first: int) -> None:
        super().__init__(f"have seq {have}, the next frame starts at {first}")
        self.have = have
        self.first = first


class Resync(Exception):
    """The server cannot serve our seq (``resync``): reload the board, expecting
    ``board_id`` at ``head`` or later."""

    def __init__(self, head: int, board_id: str | None) -> None:
        super().__init__(f"resync to board {board_id} at seq {head}")
        self.head = head
        self.board_id = board_id


@dataclass(frozen=True, slots=True)
class Hello:
    head: int
    board_id: str | None


@dataclass(frozen=True, slots=True)
class Online:
    count: int


@dataclass(frozen=True, slots=True)
class Other:
    """A control message this client does not act on (``pong``, ``error``, new ones)."""

    message: object


Control = Hello | Online | Policy | Other


class LiveState:
    """The board as the stream leaves it. ``colors`` is updated in place, so a reference
    to it stays live."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.colors: Colors = snapshot.colors.copy()
        self.seq = snapshot.seq
        self.board_id = snapshot.board_id

    @property
    def width(self) -> int:
        return int(self.colors.shape[1])

    def load(self, snapshot: Snapshot) -> None:
        """Replace the board with a freshly fetched one (start, resync)."""
        if snapshot.colors.shape != self.colors.shape:
            raise ValueError(f"a board of shape {snapshot.colors.shape}, not {self.colors.shape}")
        self.colors[...] = snapshot.colors
        self.seq = snapshot.seq
        self.board_id = snapshot.board_id

    def snapshot(self) -> Snapshot:
        """A copy of the board as it is now."""
        return Snapshot(self.colors.copy(), self.seq, self.board_id)

    def frame(self, data: bytes) -> list[Placement]:
        """Apply a batch frame; the placements it added (those after :attr:`seq`).

        Raises :class:`Gap` when it starts after ``seq + 1``, and
        :class:`~openplace.core.wire.FrameError` when it is not a batch frame."""
        first, items = decode_frame(data)
        if first > self.seq + 1:
            raise Gap(self.seq, first)
        skip = self.seq + 1 - first  # already applied: an overlap, or a board ahead
        if skip >= len(items):
            return []
        flat = self.colors.reshape(-1)
        width = self.width
        out = []
        for j in range(skip, len(items)):
            index, color = items[j]
            flat[index] = color
            out.append(Placement(first + j, index % width, index // width, color))
        self.seq = first + len(items) - 1
        return out

    def control(self, text: str | bytes) -> Control:
        """Read a JSON control message; a ``resync`` raises :class:`Resync`."""
        message = orjson.loads(text)
        if not isinstance(message, dict):
            return Other(message)
        kind = message.get("type")
        if kind == "resync":
            raise Resync(int(message.get("head") or 0), message.get("board"))
        if kind == "hello":
            return Hello(int(message.get("head") or 0), message.get("board"))
        if kind == "online":
            return Online(int(message.get("count") or 0))
        if kind == "policy":
            return Policy.from_json(message)
        return Other(message)
