"""The board as served over HTTP: a snapshot, its gzip, and an ETag, reused briefly.

Serving a snapshot up to ``refresh`` seconds old is safe because it carries its own
seq (``X-Seq``) and clients catch up from there, so the cost of ``GET /api/board`` does
not grow with the request rate.
"""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from openplace.api.errors import APIError
from openplace.core.placement import StoreUnavailable
from openplace.observe.metrics import BOARD_CACHE_HITS, BOARD_STORE_READS
from openplace.storage.base import Store


@dataclass(slots=True)
class CachedBoard:
    data: bytes
    seq: int
    board_id: str
    etag: str
    taken: float
    _gzip: asyncio.Task[bytes] | None = field(default=None, repr=False)

    async def gzipped(self) -> bytes:
        """The gzip encoding, computed once, in a thread (a busy board takes ~50 ms)."""
        if self._gzip is None:
            self._gzip = asyncio.ensure_future(
                asyncio.to_thread(gzip.compress, self.data, 6, mtime=0)
            )
        return await asyncio.shield(self._gzip)


class BoardCache:
    """The current :class:`CachedBoard`; at most one fetch from the store in flight, so
    a burst of requests after it expires costs the store one read, not one each."""

    def __init__(
        self, store: Store, refresh: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.store = store
        self.refresh = refresh
        self.clock = clock
        self._current: CachedBoard | None = None
        self._fetching: asyncio.Future[CachedBoard] | None = None

    async def get(self) -> CachedBoard:
        cur = self._current
        if cur is not None and self.clock() - cur.taken < self.refresh:
            BOARD_CACHE_HITS.inc()
            return cur
        if self._fetching is None:
            self._fetching = asyncio.ensure_future(self._fetch())
            self._fetching.add_done_callback(self._fetched)
        else:  # another request's read serves this one too
            BOARD_CACHE_HITS.inc()
        return await asyncio.shield(self._fetching)

    def _fetched(self, fetch: asyncio.Future[CachedBoard]) -> None:
        self._fetching = None
        if not fetch.cancelled():
            fetch.exception()  # retrieved here; every waiter sees it too

    async def _fetch(self) -> CachedBoard:
        now = self.clock()
        BOARD_STORE_READS.inc()
        try:
            snap = await self.store.board()
        except StoreUnavailable as exc:
            raise APIError(503, "unavailable", str(exc), headers={"Retry-After": "1"}) from exc
        cur = self._current
        if cur is not None and cur.seq == snap.seq and cur.board_id == snap.board_id:
            cur.taken = now
            return cur
        self._current = CachedBoard(
            snap.data, snap.seq, snap.board_id, f'"{snap.board_id}-{snap.seq}"', now
        )
        return self._current
