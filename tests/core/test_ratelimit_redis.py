"""The Redis limiter against a real Redis (SPEC §9, CHK-AK-06, BI-03): the same decisions as the
in-process limiter for any arrival sequence, atomic across nodes, Redis's clock rather than the
node's, keys that expire with their window, and a 503 (never a pass, never a 500) when Redis is
down.

The property tests feed the real Lua script an injected clock (the limiter's test-only `clock`
argument replaces Redis's `TIME`), so hypothesis can replay any arrival sequence without waiting;
the tests without a clock run on Redis's own time.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import pytest
import time_machine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr
from redis.asyncio import Redis

from authkeep.core import redis_client
from authkeep.core.ratelimit import Decision, MemoryRateLimiter
from authkeep.core.ratelimit_redis import RedisRateLimiter
from authkeep.errors import LimiterUnavailable
from support.secrets_scan import FIGURES


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def redis_limiter(url: str, clock: Clock | None = None) -> AsyncIterator[RedisRateLimiter]:
    """A limiter on its own client and its own key prefix; the client is closed afterwards."""
    client = redis_client.connect(SecretStr(url))
    try:
        yield RedisRateLimiter(client, prefix=f"t{secrets.token_hex(4)}:", clock=clock)
    finally:
        await client.aclose()


def as_tuple(decision: Decision) -> tuple[bool, int, int, int]:
    return decision.allowed, decision.remaining, decision.retry_after, decision.reset


async def test_allows_the_limit_then_refuses_with_retry_after_and_reset(redis_url: str) -> None:
    """The same numbers as the in-process limiter's own test: 3 in 60 s, the 4th waits 50 s."""
    clock = Clock()
    async with redis_limiter(redis_url, clock) as limiter:
        decisions = [await limiter.hit("k", 3, 60) for _ in range(3)]
        assert [d.remaining for d in decisions] == [2, 1, 0]
        assert [d.reset for d in decisions] == [60, 60, 60]
        clock.now += 10
        refused = await limiter.hit("k", 3, 60)
        assert as_tuple(refused) == (False, 0, 50, 50)
        assert limiter.denied == 1
        assert (await limiter.peek("k", 3, 60)).allowed is False
        clock.now += 50
        assert (await limiter.hit("k", 3, 60)).allowed


async def test_costs_refunds_peek_and_reset(redis_url: str) -> None:
    clock = Clock()
    async with redis_limiter(redis_url, clock) as limiter:
        assert as_tuple(await limiter.hit("k", 10, 60, cost=4)) == (True, 6, 0, 60)
        clock.now += 5
        assert as_tuple(await limiter.hit("k", 10, 60, cost=4)) == (True, 2, 0, 55)
        clock.now += 5
        # 8 used: a cost of 4 waits until the first event (t=0) leaves, 50 s from now.
        assert as_tuple(await limiter.hit("k", 10, 60, cost=4)) == (False, 2, 50, 50)
        assert as_tuple(await limiter.hit("k", 10, 60, cost=2)) == (True, 0, 0, 50)
        await limiter.refund("k")  # the cost-2 event comes back
        assert as_tuple(await limiter.peek("k", 10, 60)) == (True, 2, 0, 50)
        await limiter.reset("k")
        assert as_tuple(await limiter.peek("k", 10, 60)) == (True, 10, 0, 0)
        await limiter.refund("never-seen")  # harmless


arrivals = st.lists(
    st.tuples(
        st.integers(0, 64).map(lambda eighths: eighths / 8),  # exact in binary and in µs
        st.integers(0, 4),  # cost
        st.booleans(),  # refund it when allowed
    ),
    min_size=1,
    max_size=60,
)


@given(limit=st.integers(1, 8), window=st.integers(1, 20), events=arrivals)
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_same_decisions_as_memory_and_never_over_the_limit_BI_03(
    redis_url: str, limit: int, window: int, events: list[tuple[float, int, bool]]
) -> None:
    """BI-03 for the Redis backend: for any arrival sequence of (time offset, cost), with some
    allowed events taken back, the Redis limiter answers exactly what the in-process one answers
    (allowed, remaining, Retry-After, reset), and the units kept inside any window never exceed
    the limit."""

    async def run() -> None:
        clock = Clock()
        memory = MemoryRateLimiter(clock=clock)
        async with redis_limiter(redis_url, clock) as shared:
            kept: list[tuple[float, int]] = []
            for gap, cost, refund in events:
                clock.now += gap
                expected = await memory.hit("k", limit, window, cost)
                got = await shared.hit("k", limit, window, cost)
                assert as_tuple(got) == as_tuple(expected)
                if got.allowed and cost > 0:
                    kept.append((clock.now, cost))
                    if refund:
                        await memory.refund("k")
                        await shared.refund("k")
                        kept.pop()
                inside = sum(units for moment, units in kept if moment > clock.now - window)
                assert inside <= limit
            assert as_tuple(await shared.peek("k", limit, window)) == as_tuple(
                await memory.peek("k", limit, window)
            )

    asyncio.run(run())


async def test_nodes_racing_get_exactly_the_limit_FI_RACE(redis_url: str) -> None:
    """Two nodes (two clients), 200 concurrent hits on one budget of 50: exactly 50 pass,
    because check-and-record is one Lua script."""
    async with redis_limiter(redis_url) as first:
        second = RedisRateLimiter(redis_client.connect(SecretStr(redis_url)), prefix=first.prefix)
        try:
            calls = [(first if i % 2 else second).hit("shared", 50, 60) for i in range(200)]
            decisions = await asyncio.gather(*calls)
        finally:
            await second.client.aclose()
    allowed = sum(d.allowed for d in decisions)
    assert allowed == 50
    assert sorted(d.remaining for d in decisions if d.allowed) == list(range(50))
    FIGURES.append(
        f"FI-RACE redis limiter: 200 concurrent hits from 2 clients, limit 50 -> {allowed}"
    )


async def test_the_window_is_on_redis_time_not_the_node_clock(redis_url: str) -> None:
    """A node whose clock runs an hour ahead still sees the other node's events: the script
    reads Redis's `TIME`, so nodes with skewed clocks agree on the window."""
    async with redis_limiter(redis_url) as first:
        assert (await first.hit("k", 2, 60)).allowed
        assert (await first.hit("k", 2, 60)).allowed
        with time_machine.travel(time.time() + 3600, tick=True):
            skewed = RedisRateLimiter(
                redis_client.connect(SecretStr(redis_url)), prefix=first.prefix
            )
            try:
                refused = await skewed.hit("k", 2, 60)
            finally:
                await skewed.client.aclose()
    assert refused.allowed is False
    assert 1 <= refused.retry_after <= 60


async def test_events_leave_the_window_and_keys_expire_with_it(redis_url: str) -> None:
    """On Redis's own clock: a 1 s window frees its slots and its keys within about a second
    (polled, no fixed sleep); the keys' TTL is the window."""
    async with redis_limiter(redis_url) as limiter:
        assert (await limiter.hit("k", 2, 1)).allowed
        assert (await limiter.hit("k", 2, 1)).allowed
        refused = await limiter.hit("k", 2, 1)
        assert (refused.allowed, refused.retry_after) == (False, 1)
        client: Redis = limiter.client
        log, meta = limiter._keys("k")
        assert 0 < await client.pttl(log) <= 1001
        assert 0 < await client.pttl(meta) <= 1001
        assert await poll(lambda: limiter.hit("k", 2, 1), lambda d: d.allowed)
        await limiter.refund("k")
        assert await poll(lambda: client.exists(log, meta), lambda n: n == 0)


R = TypeVar("R")


async def poll(
    call: Callable[[], Awaitable[R]], done: Callable[[R], bool], timeout: float = 5.0
) -> bool:
    """Call until `done(result)` or `timeout` passes; returns whether it got there."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done(await call()):
            return True
        await asyncio.sleep(0.05)
    return False


@pytest.mark.parametrize("port_fixture", ["closed_port", "blackhole_port"])
async def test_unreachable_redis_fails_closed_with_503(
    port_fixture: str, request: pytest.FixtureRequest
) -> None:
    """Refused connections and a Redis that never answers both become `LimiterUnavailable`
    (503 `rate_limiter_unavailable`, Retry-After) — never an allowed event, never a hang."""
    port: int = request.getfixturevalue(port_fixture)
    async with redis_limiter(f"redis://127.0.0.1:{port}/0") as limiter:
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: limiter.hit("k", 5, 60),
            lambda: limiter.peek("k", 5, 60),
            lambda: limiter.refund("k"),
            lambda: limiter.reset("k"),
        ]
        # A silent Redis costs each call the command timeout (1 s): one call proves it.
        for call in calls if port_fixture == "closed_port" else calls[:1]:
            with pytest.raises(LimiterUnavailable) as caught:
                await call()
            assert caught.value.status_code == 503
            assert caught.value.code == "rate_limiter_unavailable"
            assert caught.value.headers["Retry-After"] == "5"
