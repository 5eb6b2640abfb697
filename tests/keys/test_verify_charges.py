"""Credits and plan quotas on verify: taken atomically, refilled per period, never overshot by
racing calls (SPEC §7, RELIABILITY CHK-AC-08, CHK-AK-05, FI-RACE-02), and entitlements only
through an active subscription (seed 004)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import time_machine
from fastapi import FastAPI
from sqlalchemy import select
from verify_helpers import change_key, make_key, make_plan, make_user, subscribe, verify

from authkeep.keys.models import ApiKey
from authkeep.plans.entitlements import period_start
from authkeep.plans.models import QuotaCounter, ThresholdEvent
from support.secrets_scan import FIGURES
from users.identity_helpers import database

RACE_CALLS = 100
RACE_TRIALS = 5
LAST_UNITS = 10


async def credits_left(app: FastAPI, key_id: uuid.UUID) -> int | None:
    async with database(app).session_scope() as db:
        value = await db.scalar(select(ApiKey.credits_remaining).where(ApiKey.id == key_id))
        return None if value is None else int(value)


async def quota_used(app: FastAPI, user_id: uuid.UUID, feature: str) -> int:
    async with database(app).session_scope() as db:
        value = await db.scalar(
            select(QuotaCounter.used).where(
                QuotaCounter.user_id == user_id, QuotaCounter.feature == feature
            )
        )
        return int(value or 0)


async def test_credits_are_taken_by_cost_and_never_below_zero(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """CHK-AC-08: each call takes `cost`; a call that does not fit takes nothing and is
    USAGE_EXCEEDED with the credits still there; cost 0 only checks."""
    issued = await make_key(app, credits_remaining=7)
    assert (await verify(client, issued.key, {"cost": 5}))["credits_remaining"] == 2
    refused = await verify(client, issued.key, {"cost": 3})
    assert (refused["code"], refused["valid"], refused["credits_remaining"]) == (
        "USAGE_EXCEEDED",
        False,
        2,
    )
    assert (await verify(client, issued.key, {"cost": 2}))["credits_remaining"] == 0
    assert (await verify(client, issued.key))["code"] == "USAGE_EXCEEDED"
    zero = await verify(client, issued.key, {"cost": 0})
    assert (zero["code"], zero["credits_remaining"]) == ("VALID", 0)
    assert await credits_left(app, issued.key_id) == 0


@pytest.mark.parametrize(
    ("interval", "next_period"),
    [("day", timedelta(days=1)), ("month", timedelta(days=32))],
)
async def test_credits_refill_once_per_period(
    app: FastAPI, client: httpx.AsyncClient, interval: str, next_period: timedelta
) -> None:
    """Refill: at the first call of a new UTC day or month the credits are set back to the
    refill amount (in the same statement that takes the cost), once per period."""
    start = datetime(2031, 1, 15, 12, 0, tzinfo=UTC)
    with time_machine.travel(start, tick=False) as traveller:
        issued = await make_key(
            app,
            credits_remaining=1,
            refill_amount=5,
            refill_interval=interval,
            refilled_at=start,
        )
        assert (await verify(client, issued.key))["credits_remaining"] == 0
        assert (await verify(client, issued.key))["code"] == "USAGE_EXCEEDED"
        traveller.move_to(start + next_period)
        assert (await verify(client, issued.key))["credits_remaining"] == 4
        assert (await verify(client, issued.key, {"cost": 4}))["credits_remaining"] == 0
        assert (await verify(client, issued.key))["code"] == "USAGE_EXCEEDED"


async def test_a_key_made_before_refills_started_refills_next_period(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """No `refilled_at` yet: the key's creation counts as this period's refill."""
    start = datetime(2031, 3, 3, 23, 0, tzinfo=UTC)
    with time_machine.travel(start, tick=False) as traveller:
        issued = await make_key(app, credits_remaining=0, refill_amount=3, refill_interval="day")
        assert (await verify(client, issued.key))["code"] == "USAGE_EXCEEDED"
        traveller.move_to(start + timedelta(hours=1, seconds=1))
        assert (await verify(client, issued.key))["credits_remaining"] == 2


async def test_only_an_active_subscription_grants_a_feature(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """Seed 004 (fixed): trialing, past_due and canceled grant nothing: FORBIDDEN."""
    plan = await make_plan(app, ["api"])
    for status, expected in [
        ("active", "VALID"),
        ("trialing", "FORBIDDEN"),
        ("past_due", "FORBIDDEN"),
        ("canceled", "FORBIDDEN"),
        (None, "FORBIDDEN"),
    ]:
        user_id = await make_user(app)
        if status is not None:
            await subscribe(app, user_id, plan, status)
        issued = await make_key(app, user_id)
        result = await verify(client, issued.key, {"feature": "api"})
        assert result["code"] == expected, status
        # Without a feature asked for, the plan does not matter.
        assert (await verify(client, issued.key))["code"] == "VALID", status


async def test_the_answer_carries_the_plan_and_its_entitlements(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    plan = await make_plan(app, ["exports", "api"], {"api": 100, "unused": 5})
    user_id = await make_user(app)
    await subscribe(app, user_id, plan)
    issued = await make_key(app, user_id)
    result = await verify(client, issued.key, {"feature": "api", "cost": 30})
    assert result["code"] == "VALID"
    assert result["plan"].startswith("plan-")
    assert result["entitlements"] == [
        {"feature": "api", "limit": 100, "used": 30, "balance": 70},
        {"feature": "exports", "limit": None, "used": 0, "balance": None},
    ]
    unmetered = await verify(client, issued.key, {"feature": "exports", "cost": 30})
    assert unmetered["code"] == "VALID"
    assert unmetered["entitlements"][1] == {
        "feature": "exports",
        "limit": None,
        "used": 0,
        "balance": None,
    }


async def test_the_plan_quota_is_charged_per_month(app: FastAPI, client: httpx.AsyncClient) -> None:
    """A metered feature: `cost` units per call until the monthly limit; a new UTC month
    starts from zero."""
    start = datetime(2031, 5, 31, 23, 59, tzinfo=UTC)
    with time_machine.travel(start, tick=False) as traveller:
        plan = await make_plan(app, ["api"], {"api": 3})
        user_id = await make_user(app)
        await subscribe(app, user_id, plan)
        issued = await make_key(app, user_id)
        first = await verify(client, issued.key, {"feature": "api", "cost": 2})
        assert first["entitlements"] == [{"feature": "api", "limit": 3, "used": 2, "balance": 1}]
        second = await verify(client, issued.key, {"feature": "api"})
        assert (second["code"], second["entitlements"][0]["used"]) == ("VALID", 3)
        refused = await verify(client, issued.key, {"feature": "api"})
        assert refused["code"] == "USAGE_EXCEEDED"
        assert refused["entitlements"] == [{"feature": "api", "limit": 3, "used": 3, "balance": 0}]
        traveller.move_to(start + timedelta(minutes=2))
        assert period_start(datetime.now(UTC)).month == 6
        result = await verify(client, issued.key, {"feature": "api"})
        assert result["code"] == "VALID"
        assert result["entitlements"][0]["used"] == 1


async def test_a_refused_quota_gives_the_credits_back(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """Credits first, then the plan quota, in one unit of work: when the quota refuses, the
    credits taken a moment before are not spent."""
    plan = await make_plan(app, ["api"], {"api": 2})
    user_id = await make_user(app)
    await subscribe(app, user_id, plan)
    issued = await make_key(app, user_id, credits_remaining=10)
    for left in (9, 8):
        assert (await verify(client, issued.key, {"feature": "api"}))["credits_remaining"] == left
    refused = await verify(client, issued.key, {"feature": "api"})
    assert (refused["code"], refused["credits_remaining"]) == ("USAGE_EXCEEDED", 8)
    assert await credits_left(app, issued.key_id) == 8
    assert await quota_used(app, user_id, "api") == 2


async def threshold_kinds(app: FastAPI, subject: str) -> list[str]:
    async with database(app).session_scope() as db:
        kinds = await db.scalars(
            select(ThresholdEvent.kind).where(ThresholdEvent.subject == subject)
        )
        return sorted(kinds.all())


async def test_charges_record_their_threshold_events(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """SPEC §7 threshold events, written in the charge's transaction: quota 80/90/100 % as a
    verification crosses them, credits.exhausted when one takes the last credit — and nothing
    for a call that was refused and rolled back."""
    plan = await make_plan(app, ["api"], {"api": 10})
    user_id = await make_user(app)
    await subscribe(app, user_id, plan)
    issued = await make_key(app, user_id, credits_remaining=3)
    quota_subject, key_subject = f"user:{user_id}:api", f"key:{issued.key_id}"
    assert (await verify(client, issued.key, {"feature": "api", "cost": 7}))["code"] == (
        "USAGE_EXCEEDED"  # 7 credits asked, 3 held: nothing taken, nothing noted
    )
    assert await threshold_kinds(app, quota_subject) == []
    await change_credits(app, issued.key_id, 20)
    assert (await verify(client, issued.key, {"feature": "api", "cost": 8}))["valid"]
    assert await threshold_kinds(app, quota_subject) == ["quota.80"]
    # The quota refuses: the credits taken first go back, with their event.
    await change_credits(app, issued.key_id, 3)
    refused = await verify(client, issued.key, {"feature": "api", "cost": 3})
    assert (refused["code"], refused["credits_remaining"]) == ("USAGE_EXCEEDED", 3)
    assert await threshold_kinds(app, key_subject) == []
    assert (await verify(client, issued.key, {"feature": "api", "cost": 2}))["valid"]
    assert await threshold_kinds(app, quota_subject) == ["quota.100", "quota.80", "quota.90"]
    assert (await verify(client, issued.key, {"cost": 1}))["credits_remaining"] == 0
    assert await threshold_kinds(app, key_subject) == ["credits.exhausted"]


async def change_credits(app: FastAPI, key_id: uuid.UUID, credits: int) -> None:
    await change_key(app, key_id, credits_remaining=credits)


async def _race(client: httpx.AsyncClient, key: str, body: dict[str, Any]) -> list[str]:
    """RACE_CALLS verifications at once through the ASGI app."""
    results = await asyncio.gather(*(verify(client, key, body) for _ in range(RACE_CALLS)))
    return [result["code"] for result in results]


async def test_racing_calls_never_overshoot_credits(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """FI-RACE-02 (credits): 10 units left, 100 concurrent calls: exactly 10 succeed and the
    balance ends at 0, in every trial."""
    rows = []
    for _trial in range(RACE_TRIALS):
        issued = await make_key(app, credits_remaining=LAST_UNITS)
        await verify(client, issued.key, {"cost": 0})  # cached, as under steady traffic
        codes = await _race(client, issued.key, {})
        left = await credits_left(app, issued.key_id)
        successes = codes.count("VALID")
        rows.append((successes, left, codes.count("USAGE_EXCEEDED")))
        assert (successes, left) == (LAST_UNITS, 0)
        assert codes.count("USAGE_EXCEEDED") == RACE_CALLS - LAST_UNITS
    _figure(app, "credits", "remaining", rows)


async def test_racing_calls_never_overshoot_a_plan_quota(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """FI-RACE-02 (plan quota): a feature with 10 units left this month, 100 concurrent calls:
    exactly 10 succeed and the counter ends at the limit, in every trial."""
    rows = []
    for _trial in range(RACE_TRIALS):
        plan = await make_plan(app, ["api"], {"api": LAST_UNITS + 5})
        user_id = await make_user(app)
        await subscribe(app, user_id, plan)
        issued = await make_key(app, user_id)
        assert (await verify(client, issued.key, {"feature": "api", "cost": 5}))["valid"]
        codes = await _race(client, issued.key, {"feature": "api"})
        used = await quota_used(app, user_id, "api")
        successes = codes.count("VALID")
        rows.append((successes, used, codes.count("USAGE_EXCEEDED")))
        assert (successes, used) == (LAST_UNITS, LAST_UNITS + 5)
    _figure(app, "plan quota", "used", rows)


def _figure(
    app: FastAPI, what: str, final: str, rows: Sequence[tuple[int, int | None, int]]
) -> None:
    engine = database(app).engine.dialect.name
    overshoot = max(successes - LAST_UNITS for successes, _, _ in rows)
    line = (
        f"FI-RACE-02 {engine} {what}: {RACE_TRIALS} trials x {RACE_CALLS} concurrent calls "
        f"for the last {LAST_UNITS} units: successes {[r[0] for r in rows]}, final {final} "
        f"{[r[1] for r in rows]}, USAGE_EXCEEDED {[r[2] for r in rows]}, "
        f"max overshoot {max(0, overshoot)}"
    )
    FIGURES.append(line)
