"""Cache invalidations pushed between nodes through a real Redis (SPEC §7 "revocation pushed to
every node's cache", §9): two app instances on one database and one Redis; a change announced
on one node drops the other node's verify-cache entries within seconds, not after the cache's
TTL. Waits are polls with a deadline, never a fixed sleep.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from fastapi import FastAPI
from redis.asyncio import Redis

from authkeep.app import create_app
from authkeep.config import Settings
from authkeep.core.redis_bus import CHANNEL, RedisInvalidations
from authkeep.errors import ConfigError
from authkeep.keys.cache import KeyCache, key_cache_for
from support.redis import ThrowawayRedis
from support.secrets_scan import FIGURES, SCAN
from users.identity_helpers import bearer, client_for, new_user, started_app

PROPAGATION_DEADLINE_SECONDS = 2.0
pytestmark = pytest.mark.parametrize("migrated_url", ["sqlite"], indirect=True)


@asynccontextmanager
async def two_nodes(
    make_settings: Callable[..., Settings], url: str, redis_url: str, **overrides: object
) -> AsyncIterator[tuple[FastAPI, FastAPI]]:
    """Two app instances sharing one database and one Redis, both subscribed."""
    async with (
        started_app(make_settings, url, redis_url=redis_url, **overrides) as first,
        started_app(make_settings, url, redis_url=redis_url, **overrides) as second,
    ):
        for app in (first, second):
            await asyncio.wait_for(bus_of(app).subscribed.wait(), timeout=5)
        yield first, second


def bus_of(app: FastAPI) -> RedisInvalidations:
    bus = app.state.invalidations
    assert isinstance(bus, RedisInvalidations)
    return bus


async def seconds_until(condition: Callable[[], bool]) -> float | None:
    """How long `condition` took to hold (polled every 5 ms), or None past the deadline."""
    started = time.monotonic()
    while time.monotonic() - started < PROPAGATION_DEADLINE_SECONDS:
        if condition():
            return time.monotonic() - started
        await asyncio.sleep(0.005)
    return None


def fill(cache: KeyCache[object], user_id: uuid.UUID, count: int) -> list[uuid.UUID]:
    keys = [uuid.uuid4() for _ in range(count)]
    for key_id in keys:
        cache.put(f"digest-{key_id}", key_id, user_id, {"key": str(key_id)})
    return keys


async def test_a_change_on_one_node_drops_the_other_nodes_entries(
    migrated_url: str, make_settings: Callable[..., Settings], redis_url: str
) -> None:
    """key_changed on node A drops A's entry at once and B's within 2 s; user_changed drops
    every entry of that user on B and nothing of another user's."""
    async with two_nodes(make_settings, migrated_url, redis_url) as (node_a, node_b):
        cache_a, cache_b = key_cache_for(node_a), key_cache_for(node_b)
        alice, bob = uuid.uuid4(), uuid.uuid4()
        alice_keys = fill(cache_b, alice, 3)
        cache_a.put(f"digest-{alice_keys[0]}", alice_keys[0], alice, {})
        bob_keys = fill(cache_b, bob, 2)

        await bus_of(node_a).key_changed(alice_keys[0])
        assert cache_a.get(f"digest-{alice_keys[0]}") is None  # the publisher drops at once
        took = await seconds_until(lambda: cache_b.get(f"digest-{alice_keys[0]}") is None)
        assert took is not None, "node B still caches the changed key after 2 s"
        assert cache_b.get(f"digest-{alice_keys[1]}") is not None  # only that key

        await bus_of(node_a).user_changed(alice)
        took_user = await seconds_until(lambda: len(cache_b) == len(bob_keys))
        assert took_user is not None
        assert all(cache_b.get(f"digest-{k}") is not None for k in bob_keys)
    FIGURES.append(
        f"redis invalidation propagation node A -> node B: key {took * 1000:.1f} ms, "
        f"user {took_user * 1000:.1f} ms (deadline {PROPAGATION_DEADLINE_SECONDS:.0f} s)"
    )


async def test_a_revoked_key_stops_verifying_on_the_other_node_at_once(
    migrated_url: str, make_settings: Callable[..., Settings], redis_url: str
) -> None:
    """The user-visible promise: with a 5-minute verify cache, a key revoked through node A's
    API answers DISABLED on node B within 2 s (B had it cached as VALID)."""
    async with (
        two_nodes(make_settings, migrated_url, redis_url, key_cache_seconds=300) as (
            node_a,
            node_b,
        ),
        client_for(node_a) as a,
        client_for(node_b) as b,
    ):
        token = (await new_user(a))[2]
        a.cookies.clear()
        created = await a.post("/api/keys", json={"name": "ci"}, headers=bearer(token))
        assert created.status_code == 201, created.text
        key = SCAN.register(created.json()["key"])
        key_id = created.json()["id"]

        async def verify_code() -> str:
            answer = await b.post("/api/keys/verify", json={}, headers={"X-API-Key": key})
            assert answer.status_code == 200, answer.text
            code: str = answer.json()["code"]
            return code

        assert await verify_code() == "VALID"
        assert len(key_cache_for(node_b)) == 1  # B answers from its cache from now on
        revoked = await a.post(f"/api/keys/{key_id}/revoke", headers=bearer(token))
        assert revoked.status_code == 200, revoked.text
        started = time.monotonic()
        code = await verify_code()
        while code == "VALID" and time.monotonic() - started < PROPAGATION_DEADLINE_SECONDS:
            await asyncio.sleep(0.01)
            code = await verify_code()
        assert code == "DISABLED"


async def test_malformed_messages_are_ignored_and_the_listener_keeps_going(
    migrated_url: str, make_settings: Callable[..., Settings], redis_url: str
) -> None:
    async with two_nodes(make_settings, migrated_url, redis_url) as (node_a, _):
        cache = key_cache_for(node_a)
        [key_id] = fill(cache, uuid.uuid4(), 1)
        publisher = Redis.from_url(redis_url)
        try:
            for junk in ("garbage", "key:not-a-uuid", f"thing:{key_id}", ""):
                await publisher.publish(CHANNEL, junk)
            await publisher.publish(CHANNEL, f"key:{key_id}")
        finally:
            await publisher.aclose()
        assert await seconds_until(lambda: len(cache) == 0) is not None
        assert bus_of(node_a).received == 1


async def test_publishing_while_redis_is_down_still_drops_locally(
    migrated_url: str,
    make_settings: Callable[..., Settings],
    closed_port: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A committed change is never reported as failed because Redis is down: this node's entry
    goes, the failure is logged (without the URL), other nodes drop theirs at the TTL."""
    redis_url = f"redis://:hunter2-{closed_port}@127.0.0.1:{closed_port}/0"
    SCAN.register(f"hunter2-{closed_port}")
    async with started_app(make_settings, migrated_url, redis_url=redis_url) as app:
        cache = key_cache_for(app)
        [key_id] = fill(cache, uuid.uuid4(), 1)
        with caplog.at_level(logging.ERROR, logger="authkeep.redis"):
            await bus_of(app).key_changed(key_id)
        assert len(cache) == 0
        assert any("not published" in r.getMessage() for r in caplog.records)


async def test_a_node_that_lost_redis_resubscribes_and_empties_its_cache(
    migrated_url: str, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """Redis restarts: the listener notices, subscribes again when Redis is back, and empties
    its cache (messages sent meanwhile are lost); invalidations work again afterwards."""
    server = ThrowawayRedis(tmp_path)
    server.start()
    try:
        async with started_app(make_settings, migrated_url, redis_url=server.url) as app:
            bus, cache = bus_of(app), key_cache_for(app)
            await asyncio.wait_for(bus.subscribed.wait(), timeout=5)
            server.stop()
            assert await wait_for(lambda: not bus.subscribed.is_set())
            stale = fill(cache, uuid.uuid4(), 2)
            server.start()
            assert await wait_for(lambda: bus.subscribed.is_set() and len(cache) == 0)
            [key_id] = fill(cache, uuid.uuid4(), 1)
            publisher = Redis.from_url(server.url)
            try:
                await publisher.publish(CHANNEL, f"key:{key_id}")
            finally:
                await publisher.aclose()
            assert await wait_for(lambda: len(cache) == 0)
            assert all(cache.get(f"digest-{k}") is None for k in stale)
    finally:
        server.stop()


async def wait_for(condition: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(0.02)
    return False


async def test_an_invalid_redis_url_is_a_config_error_that_hides_the_url(
    migrated_url: str, make_settings: Callable[..., Settings]
) -> None:
    password = SCAN.register("s3cret-redis-pw")
    with pytest.raises(ConfigError) as caught:
        create_app(make_settings(database_url=migrated_url, redis_url=f"http://:{password}@h/0"))
    assert "AUTHKEEP_REDIS_URL" in caught.value.detail
    assert password not in caught.value.detail
