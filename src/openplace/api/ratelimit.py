"""A small in-memory token-bucket rate limiter, keyed by e.g. client IP."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


class RateLimiter:
    """Allow ``rate`` events per ``per`` seconds per key, with bursts up to ``rate``."""

    def __init__(
        self,
        rate: int,
        per: float,
        *,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.per = per
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, key: str) -> bool:
        now = self.clock()
        tokens, stamp = self._buckets.pop(key, (float(self.rate), now))
        tokens = min(float(self.rate), tokens + (now - stamp) * self.rate / self.per)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return allowed
