"""The client's cache rule (docs/client.md "What the cache keeps"): only answers that no other
call can change are kept, under a digest of the key, never the key (CHK-AK-05: usage is still
counted once per call, see test_client_verify.py)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from authkeep.client.cache import (
    TtlCache,
    cacheable,
    seconds_until,
    secret_digest,
    verify_slot,
)
from authkeep.keys.format import new_key
from authkeep.keys.schemas import (
    Outcome,
    RateLimitRequest,
    RateLimitState,
    VerifyRequest,
    VerifyResult,
)


def valid(**fields: object) -> VerifyResult:
    return VerifyResult.model_validate(
        {"valid": True, "code": "VALID", "key_id": uuid.uuid4(), "owner": "o", **fields}
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_only_valid_answers_without_limits_or_credits_are_cacheable() -> None:
    assert cacheable(valid())
    assert not cacheable(valid(credits_remaining=10))
    assert not cacheable(valid(credits_remaining=0))
    state = RateLimitState(name="rpm", limit=10, remaining=9, reset=0, exceeded=False)
    assert not cacheable(valid(ratelimits=[state]))
    for outcome in Outcome:
        if outcome is not Outcome.VALID:
            assert not cacheable(VerifyResult(valid=False, code=outcome))


def test_requests_with_a_feature_or_explicit_ratelimits_are_never_cached() -> None:
    key = new_key("ak")
    assert verify_slot(key, VerifyRequest()) is not None
    assert verify_slot(key, VerifyRequest(cost=7, permissions="a and b")) is not None
    assert verify_slot(key, VerifyRequest(feature="exports")) is None
    assert verify_slot(key, VerifyRequest(ratelimits=[])) is None
    assert verify_slot(key, VerifyRequest(ratelimits=[RateLimitRequest(name="rpm")])) is None


def test_the_slot_holds_a_digest_and_separates_permissions_never_cost() -> None:
    key = new_key("ak")
    slot = verify_slot(key, VerifyRequest(permissions="docs.read"))
    assert slot is not None
    assert key not in repr(slot)
    assert slot.key_digest == secret_digest(key)
    assert slot != verify_slot(key, VerifyRequest(permissions="docs.write"))
    assert slot != verify_slot(new_key("ak"), VerifyRequest(permissions="docs.read"))
    assert slot == verify_slot(key, VerifyRequest(permissions="docs.read", cost=50))


def test_entries_expire_after_the_ttl_or_sooner_when_asked() -> None:
    clock = Clock()
    cache: TtlCache[str, int] = TtlCache(5.0, clock=clock)
    cache.put("a", 1)
    cache.put("b", 2, seconds=1.0)
    cache.put("c", 3, seconds=60.0)  # never longer than the TTL
    clock.now += 0.999
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (1, 2, 3)
    clock.now += 0.001
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (1, None, 3)
    clock.now += 4.0
    assert (cache.get("a"), cache.get("c")) == (None, None)
    assert len(cache) == 0


@pytest.mark.parametrize("ttl", [0.0, -1.0])
def test_a_ttl_of_zero_keeps_nothing(ttl: float) -> None:
    cache: TtlCache[str, int] = TtlCache(ttl)
    cache.put("a", 1)
    assert cache.get("a") is None
    assert len(cache) == 0


def test_an_expired_or_expiring_key_is_not_kept() -> None:
    cache: TtlCache[str, int] = TtlCache(5.0)
    cache.put("gone", 1, seconds=seconds_until(datetime.now(UTC) - timedelta(seconds=1)))
    assert cache.get("gone") is None
    naive_soon = datetime.now(UTC).replace(tzinfo=None) + timedelta(seconds=2)
    left = seconds_until(naive_soon)
    assert left is not None
    assert 0 < left <= 2
    assert seconds_until(None) is None


def test_the_cache_is_bounded_least_recently_used_first() -> None:
    cache: TtlCache[int, int] = TtlCache(60.0, max_entries=3)
    for n in range(3):
        cache.put(n, n)
    assert cache.get(0) == 0  # 0 is now the most recently used
    cache.put(3, 3)
    assert cache.get(1) is None
    assert [cache.get(n) for n in (0, 2, 3)] == [0, 2, 3]
