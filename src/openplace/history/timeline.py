"""The board at any moment, from keyframes plus a bounded slice of the log."""

from __future__ import annotations

import asyncio
import bisect
from collections import OrderedDict
from collections.abc import AsyncIterator

import numpy as np
import numpy.typing as npt

from openplace.core.board import Board, apply_arrays
from openplace.core.timeline import HistoryError, LogSlice, board_at, heat_counts
from openplace.storage.base import Archive

# Log rows read per query when a range is long (heatmaps, timelapses).
CHUNK = 200_000


class Timeline:
    """Past boards, ranges and frames of one archive. Past boards never change, so the
    newest ``cache_size`` built are kept. Heat maps read the whole range's log: at most
    ``heat_at_once`` are computed at a time (more wait), so a burst of them cannot take
    every core from the placements."""

    def __init__(self, archive: Archive, cache_size: int = 8, heat_at_once: int = 1) -> None:
        self.archive = archive
        self.geometry = archive.geometry
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._cache_size = cache_size
        self._heat_slots = asyncio.Semaphore(heat_at_once)

    async def head(self) -> int:
        """The newest seq of the history (committed)."""
        return (await self.archive.committed())[0]

    async def check_seq(self, seq: int) -> int:
        """``seq`` if the history has it, else :class:`HistoryError`."""
        head = await self.head()
        if not 0 <= seq <= head:
            raise HistoryError(f"seq {seq} is not in the history (0..{head})")
        return head

    async def board(self, seq: int) -> bytes:
        """The packed board right after placement ``seq`` (0: the empty board)."""
        cached = self._cache.get(seq)
        if cached is not None:
            self._cache.move_to_end(seq)
            return cached
        keyframe = await self.archive.keyframe(seq)
        base = keyframe[0] if keyframe is not None else 0
        log = await self.archive.log(base, seq)
        log.check(seq)
        data = board_at(self.geometry, keyframe, log)
        self._cache[seq] = data
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return data

    async def seq_at(self, ts: float) -> int:
        return await self.archive.seq_at(ts)

    async def log(self, after: int, upto: int, *, times: bool = False) -> LogSlice:
        """The complete log slice ``after+1 .. upto``."""
        log = await self.archive.log(after, upto, times=times)
        log.check(upto)
        return log

    async def heat(self, after: int, upto: int) -> npt.NDArray[np.int64]:
        """Placements per pixel in ``after+1 .. upto``, shape ``(height, width)``."""
        async with self._heat_slots:
            total = np.zeros((self.geometry.height, self.geometry.width), dtype=np.int64)
            start = after
            while start < upto:
                end = min(upto, start + CHUNK)
                indexes = (await self.log(start, end)).indexes
                total += await asyncio.to_thread(heat_counts, indexes, self.geometry)
                start = end
            return total

    async def frames(self, after: int, seqs: list[int]) -> AsyncIterator[tuple[int, bytes]]:
        """``(seq, packed board)`` after each of ``seqs`` (not decreasing, none before
        ``after``), e.g. :func:`~openplace.core.timeline.frame_seqs`.

        Each frame starts from the newest keyframe since the previous frame, if any, and
        applies at most a keyframe interval of the log: the cost follows the frames, not
        the placements between them."""
        board = Board(self.geometry, await self.board(after))
        seq = after
        keyframes = await self.archive.keyframe_seqs()
        for target in seqs:
            newest = bisect.bisect_right(keyframes, target) - 1
            if newest >= 0 and keyframes[newest] > seq:  # jump: read it only then
                keyframe = await self.archive.keyframe(keyframes[newest])
                assert keyframe is not None
                seq, board = keyframe[0], Board(self.geometry, keyframe[1])
            if target > seq:
                log = await self.log(seq, target)
                apply_arrays(board.data, log.indexes, log.colors)
                seq = target
            yield seq, bytes(board.data)
