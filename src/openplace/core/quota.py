"""Sessions per address: a cap per minute and a cap per day, in fixed windows.

The embedded store counts in memory with :class:`SessionQuota`; the distributed store
counts the same windows in Redis (``distributed/keys.py: SESSION_LUA``), shared by
every API process. Pure: no I/O.
"""

from __future__ import annotations

MINUTE = 60
DAY = 86_400


def window_end(now: float, length: int) -> float:
    """When the fixed window of ``length`` seconds holding ``now`` ends."""
    return (int(now) // length + 1) * length


class SessionQuota:
    """At most ``per_minute`` and ``per_day`` new sessions per key (an address)."""

    def __init__(self, per_minute: int, per_day: int, *, max_keys: int = 200_000) -> None:
        self.per_minute = per_minute
        self.per_day = per_day
        self.max_keys = max_keys
        self._minute: dict[str, tuple[int, int]] = {}  # key -> (window, count)
        self._day: dict[str, tuple[int, int]] = {}

    def admit(self, key: str, now: float) -> float | None:
        """Count a session for ``key``: ``None`` if admitted, else seconds to wait."""
        minute, day = int(now) // MINUTE, int(now) // DAY
        m_window, m_count = self._minute.get(key, (minute, 0))
        d_window, d_count = self._day.get(key, (day, 0))
        m_count = m_count if m_window == minute else 0
        d_count = d_count if d_window == day else 0
        if d_count >= self.per_day:
            return window_end(now, DAY) - now
        if m_count >= self.per_minute:
            return window_end(now, MINUTE) - now
        for counts in (self._minute, self._day):
            if len(counts) >= self.max_keys:
                counts.clear()  # under a flood of addresses, forget rather than grow
        self._minute[key] = (minute, m_count + 1)
        self._day[key] = (day, d_count + 1)
        return None
