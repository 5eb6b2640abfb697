"""Sliding-window rate limits behind one small interface (CHK-BF-04, BI-03 limiter invariant).

`hit(key, limit, window_seconds)` records one event for `key` and says whether it fits: never
more than `limit` events are allowed inside any window of `window_seconds`. `refund` takes the
last event back (a sign-in that turned out to be correct is not a failure); `peek` looks without
recording. The in-process backend keeps an exact log of at most `limit` timestamps per key and
at most `max_keys` keys (least recently used are dropped), so memory stays bounded whatever the
traffic. A later Redis backend implements the same `RateLimiter` protocol for multi-node setups.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from starlette.applications import Starlette

DEFAULT_MAX_KEYS = 10_000


@dataclass(frozen=True)
class Decision:
    """The answer for one event: allowed or not, slots left, and seconds until one frees."""

    allowed: bool
    remaining: int
    retry_after: int


class RateLimiter(Protocol):
    """What every backend offers. Methods are async so a networked backend fits behind it."""

    async def hit(self, key: str, limit: int, window_seconds: float) -> Decision: ...

    async def peek(self, key: str, limit: int, window_seconds: float) -> Decision: ...

    async def refund(self, key: str) -> None: ...

    async def reset(self, key: str) -> None: ...


class MemoryRateLimiter:
    """Exact sliding-window log for one process. Every method runs without awaiting, so
    concurrent requests on one event loop see each other's events immediately."""

    def __init__(
        self, max_keys: int = DEFAULT_MAX_KEYS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_keys = max_keys
        self.clock = clock
        self.denied = 0
        self._events: OrderedDict[str, deque[float]] = OrderedDict()

    def _window(self, key: str, window_seconds: float, now: float) -> deque[float]:
        events = self._events.get(key)
        if events is None:
            events = deque()
            self._events[key] = events
            while len(self._events) > self.max_keys:
                self._events.popitem(last=False)
        else:
            self._events.move_to_end(key)
        horizon = now - window_seconds
        while events and events[0] <= horizon:
            events.popleft()
        return events

    def _decide(self, events: deque[float], limit: int, window: float, now: float) -> Decision:
        if len(events) < limit:
            return Decision(True, limit - len(events), 0)
        # The slot that frees first is the one that makes the log shorter than `limit`.
        oldest_blocking = events[len(events) - limit]
        return Decision(False, 0, max(1, math.ceil(oldest_blocking + window - now)))

    async def hit(self, key: str, limit: int, window_seconds: float) -> Decision:
        now = self.clock()
        events = self._window(key, window_seconds, now)
        decision = self._decide(events, limit, window_seconds, now)
        if not decision.allowed:
            self.denied += 1
            return decision
        events.append(now)
        return Decision(True, decision.remaining - 1, 0)

    async def peek(self, key: str, limit: int, window_seconds: float) -> Decision:
        now = self.clock()
        events = self._events.get(key)
        if events is None:
            return Decision(True, limit, 0)
        return self._decide(self._window(key, window_seconds, now), limit, window_seconds, now)

    async def refund(self, key: str) -> None:
        events = self._events.get(key)
        if events:
            events.pop()

    async def reset(self, key: str) -> None:
        self._events.pop(key, None)

    def __len__(self) -> int:
        return len(self._events)


def limiter_for(app: Starlette) -> RateLimiter:
    """The app's limiter: `app.state.limiter` when one is configured, else an in-process one
    created on first use (the default for a single node)."""
    limiter: RateLimiter | None = getattr(app.state, "limiter", None)
    if limiter is None:
        limiter = MemoryRateLimiter()
        app.state.limiter = limiter
    return limiter
