"""A bounded in-memory history of recent placements, as encoded records.

Used to replay what a reconnecting client missed (``/ws?since=N``) without touching
storage. Pure data structure: no I/O, no clock.
"""

from __future__ import annotations

from openplace.core.wire import RECORD_SIZE


class TooOld(LookupError):
    """The requested range starts before the oldest placement still held."""


class History:
    """The last ``capacity`` placements, ``seq`` from :attr:`first` to :attr:`head`."""

    __slots__ = ("_buf", "_cap", "first", "head")

    def __init__(self, capacity: int, head: int = 0) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self._cap = capacity
        self._buf = bytearray(capacity * RECORD_SIZE)
        self.head = head  # seq of the newest record held (0: none ever)
        self.first = head + 1  # seq of the oldest record held

    def append(self, first_seq: int, records: bytes | memoryview) -> None:
        """Add records for ``first_seq ..``; ``first_seq`` must be ``head + 1``."""
        if first_seq != self.head + 1:
            raise ValueError(f"history gap: expected seq {self.head + 1}, got {first_seq}")
        n = len(records) // RECORD_SIZE
        if n > self._cap:  # only the newest fit
            drop = n - self._cap
            records = memoryview(records)[drop * RECORD_SIZE :]
            first_seq += drop
            n = self._cap
        buf, cap = self._buf, self._cap
        pos = (first_seq - 1) % cap
        end = pos + n
        if end <= cap:
            buf[pos * RECORD_SIZE : end * RECORD_SIZE] = records
        else:
            split = (cap - pos) * RECORD_SIZE
            buf[pos * RECORD_SIZE :] = records[:split]
            buf[: (end - cap) * RECORD_SIZE] = records[split:]
        self.head = first_seq + n - 1
        self.first = max(self.first, self.head - cap + 1)

    def reset(self, head: int) -> None:
        """Forget everything; the next append must be ``head + 1``."""
        self.head = head
        self.first = head + 1

    def records(self, after: int, upto: int | None = None) -> bytes:
        """Records for seqs ``after+1 .. upto`` (default: :attr:`head`)."""
        upto = self.head if upto is None else min(upto, self.head)
        if after >= upto:
            return b""
        if after + 1 < self.first:
            raise TooOld(f"seq {after + 1} is no longer held (oldest is {self.first})")
        cap, buf = self._cap, self._buf
        start = after % cap  # position of seq after+1
        n = upto - after
        end = start + n
        if end <= cap:
            return bytes(buf[start * RECORD_SIZE : end * RECORD_SIZE])
        return bytes(buf[start * RECORD_SIZE :]) + bytes(buf[: (end - cap) * RECORD_SIZE])
