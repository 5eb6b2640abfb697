"""The in-process sliding-window limiter (CHK-BF-04, BI-03): exact per-window bound for any
arrival sequence, refunds, Retry-After, and bounded memory."""

from __future__ import annotations

import asyncio

from fastapi import FastAPI
from hypothesis import given, settings
from hypothesis import strategies as st

from authkeep.core.ratelimit import Decision, MemoryRateLimiter, limiter_for


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_allows_the_limit_then_refuses_with_retry_after() -> None:
    clock = Clock()
    limiter = MemoryRateLimiter(clock=clock)
    decisions = [await limiter.hit("k", 3, 60) for _ in range(3)]
    assert [d.remaining for d in decisions] == [2, 1, 0]
    clock.now += 10
    refused = await limiter.hit("k", 3, 60)
    assert refused == Decision(allowed=False, remaining=0, retry_after=50)
    assert limiter.denied == 1
    assert (await limiter.peek("k", 3, 60)).allowed is False
    clock.now += 50
    assert (await limiter.hit("k", 3, 60)).allowed


async def test_window_slides_rather_than_resetting() -> None:
    """Events at t=0..2 and a burst at t=59 must not allow a second burst at t=61."""
    clock = Clock()
    limiter = MemoryRateLimiter(clock=clock)
    assert (await limiter.hit("k", 2, 60)).allowed
    clock.now += 59
    assert (await limiter.hit("k", 2, 60)).allowed
    clock.now += 2  # the first event left the window, the second did not
    assert (await limiter.hit("k", 2, 60)).allowed
    assert not (await limiter.hit("k", 2, 60)).allowed


async def test_refund_gives_the_last_event_back_and_reset_forgets() -> None:
    limiter = MemoryRateLimiter(clock=Clock())
    for _ in range(2):
        await limiter.hit("k", 2, 60)
    await limiter.refund("k")
    assert (await limiter.hit("k", 2, 60)).allowed
    assert not (await limiter.hit("k", 2, 60)).allowed
    await limiter.reset("k")
    assert (await limiter.peek("k", 2, 60)) == Decision(True, 2, 0)
    await limiter.refund("never-seen")  # harmless


async def test_keys_are_independent_and_memory_is_bounded() -> None:
    limiter = MemoryRateLimiter(max_keys=100, clock=Clock())
    for i in range(1000):
        assert (await limiter.hit(f"k{i}", 1, 60)).allowed
    assert len(limiter) == 100
    assert not (await limiter.hit("k999", 1, 60)).allowed  # recent keys are kept


@given(
    limit=st.integers(1, 6),
    window=st.integers(1, 20),
    gaps=st.lists(st.floats(0, 8, allow_nan=False), min_size=1, max_size=80),
    refunds=st.lists(st.booleans(), max_size=80),
)
@settings(max_examples=300, deadline=None)
def test_never_more_than_limit_in_any_window_BI_03(
    limit: int, window: int, gaps: list[float], refunds: list[bool]
) -> None:
    """For any arrival sequence (with refunds of some allowed events), the kept events in
    every window of `window` seconds never exceed `limit`."""

    async def run() -> None:
        clock = Clock()
        limiter = MemoryRateLimiter(clock=clock)
        kept: list[float] = []
        for index, gap in enumerate(gaps):
            clock.now += gap
            if (await limiter.hit("k", limit, window)).allowed:
                kept.append(clock.now)
                if index < len(refunds) and refunds[index]:
                    await limiter.refund("k")
                    kept.pop()
            inside = [t for t in kept if t > clock.now - window]
            assert len(inside) <= limit

    asyncio.run(run())


@given(
    limit=st.integers(1, 8),
    window=st.integers(1, 20),
    arrivals=st.lists(
        st.tuples(st.floats(0, 8, allow_nan=False), st.integers(0, 5)), min_size=1, max_size=80
    ),
)
@settings(max_examples=300, deadline=None)
def test_costs_never_exceed_the_limit_in_any_window_BI_03(
    limit: int, window: int, arrivals: list[tuple[float, int]]
) -> None:
    """BI-03 with costs: for any arrival sequence of (time offset, cost) the units allowed inside
    every window never exceed `limit`, and an event that fits is never refused."""

    async def run() -> None:
        clock = Clock()
        limiter = MemoryRateLimiter(clock=clock)
        kept: list[tuple[float, int]] = []
        for gap, cost in arrivals:
            clock.now += gap
            before = sum(units for moment, units in kept if moment > clock.now - window)
            decision = await limiter.hit("k", limit, window, cost)
            assert decision.allowed == (before + cost <= limit)
            if decision.allowed:
                kept.append((clock.now, cost))
            inside = sum(units for moment, units in kept if moment > clock.now - window)
            assert inside <= limit
            assert decision.remaining == max(0, limit - inside)

    asyncio.run(run())


async def test_reset_is_the_time_until_the_oldest_event_leaves() -> None:
    """`reset` (the RateLimit-Reset header) counts down to the oldest counted event leaving."""
    clock = Clock()
    limiter = MemoryRateLimiter(clock=clock)
    assert (await limiter.peek("k", 3, 60)).reset == 0
    assert (await limiter.hit("k", 3, 60)).reset == 60
    clock.now += 15
    assert (await limiter.hit("k", 3, 60)).reset == 45
    clock.now += 45  # the first event leaves: the one at t=15 is now the oldest
    assert (await limiter.hit("k", 3, 60)).reset == 15


def test_app_gets_one_in_process_limiter() -> None:
    app = FastAPI()
    first = limiter_for(app)
    assert isinstance(first, MemoryRateLimiter)
    assert limiter_for(app) is first
