"""Sliding-window rate limits behind one small interface (CHK-BF-04, BI-03 limiter invariant).

`hit(key, limit, window_seconds)` records one event for `key` and says whether it fits: never
more than `limit` events are allowed inside any window of `window_seconds`. `refund` takes the
last event back (a sign-in that turned out to be correct is not a failure); `peek` looks without
recording. The in-process backend keeps an exact log of at most `limit` timestamps per key and
at most `max_keys` keys (least recently used are dropped), so memory stays bounded whatever the
traffic. `core.ratelimit_redis.RedisRateLimiter` implements the same protocol, with the same
decisions, for multi-node setups (`AUTHKEEP_REDIS_URL`).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from starlette.applications import Starlette

DEFAULT_MAX_KEYS = 10_000


@dataclass(frozen=True)
class Decision:
    """The answer for one event: allowed or not, units left, and seconds until the event fits
    (`retry_after`, 0 when allowed). `reset` is the seconds until the oldest event counted in
    the window leaves it (0 when the window is empty): the `RateLimit-Reset` header."""

    allowed: bool
    remaining: int
    retry_after: int
    reset: int = field(default=0, compare=False)


class RateLimiter(Protocol):
    """What every backend offers. Methods are async so a networked backend fits behind it.

    `cost` is how many units the event takes (an API call may cost more than one); a refused
    event takes none.
    """

    async def hit(self, key: str, limit: int, window_seconds: float, cost: int = 1) -> Decision: ...

    async def peek(self, key: str, limit: int, window_seconds: float) -> Decision: ...

    async def refund(self, key: str) -> None: ...

    async def reset(self, key: str) -> None: ...


class _Log:
    """One key's events inside the window: (time, cost) pairs and their running total."""

    __slots__ = ("events", "used")

    def __init__(self) -> None:
        self.events: deque[tuple[float, int]] = deque()
        self.used = 0


class MemoryRateLimiter:
    """Exact sliding-window log for one process. Every method runs without awaiting, so
    concurrent requests on one event loop see each other's events immediately. A key keeps at
    most `limit` entries (each allowed event costs at least one unit)."""

    def __init__(
        self, max_keys: int = DEFAULT_MAX_KEYS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_keys = max_keys
        self.clock = clock
        self.denied = 0
        self._logs: OrderedDict[str, _Log] = OrderedDict()

    def _window(self, key: str, window_seconds: float, now: float) -> _Log:
        log = self._logs.get(key)
        if log is None:
            log = _Log()
            self._logs[key] = log
            while len(self._logs) > self.max_keys:
                self._logs.popitem(last=False)
        else:
            self._logs.move_to_end(key)
        horizon = now - window_seconds
        while log.events and log.events[0][0] <= horizon:
            log.used -= log.events.popleft()[1]
        return log

    @staticmethod
    def _reset(log: _Log, window: float, now: float) -> int:
        return math.ceil(log.events[0][0] + window - now) if log.events else 0

    def _decide(self, log: _Log, limit: int, window: float, now: float, cost: int) -> Decision:
        reset = self._reset(log, window, now)
        if log.used + cost <= limit:
            return Decision(True, limit - log.used, 0, reset)
        # Wait until enough of the oldest events leave the window for `cost` units to fit.
        remaining = max(0, limit - log.used)
        freed = 0
        for moment, weight in log.events:
            freed += weight
            if log.used - freed + cost <= limit:
                return Decision(False, remaining, max(1, math.ceil(moment + window - now)), reset)
        return Decision(False, remaining, max(1, math.ceil(window)), reset)

    async def hit(self, key: str, limit: int, window_seconds: float, cost: int = 1) -> Decision:
        now = self.clock()
        log = self._window(key, window_seconds, now)
        decision = self._decide(log, limit, window_seconds, now, cost)
        if not decision.allowed:
            self.denied += 1
            return decision
        if cost > 0:
            log.events.append((now, cost))
            log.used += cost
        return Decision(True, limit - log.used, 0, self._reset(log, window_seconds, now))

    async def peek(self, key: str, limit: int, window_seconds: float) -> Decision:
        now = self.clock()
        if key not in self._logs:
            return Decision(True, limit, 0)
        return self._decide(self._window(key, window_seconds, now), limit, window_seconds, now, 1)

    async def refund(self, key: str) -> None:
        log = self._logs.get(key)
        if log and log.events:
            log.used -= log.events.pop()[1]

    async def reset(self, key: str) -> None:
        self._logs.pop(key, None)

    def __len__(self) -> int:
        return len(self._logs)


def limiter_for(app: Starlette) -> RateLimiter:
    """The app's limiter: `app.state.limiter` when one is configured, else an in-process one
    created on first use (the default for a single node)."""
    limiter: RateLimiter | None = getattr(app.state, "limiter", None)
    if limiter is None:
        limiter = MemoryRateLimiter()
        app.state.limiter = limiter
    return limiter
