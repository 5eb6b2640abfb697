"""Threshold events (SPEC §7): 80/90/100 % of a plan limit, credits exhausted and keys about to
expire each become one outbox row per subject and period, also when 20 callers cross the
threshold together (FI-RACE-02, CHK-AC-08)."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from fastapi import FastAPI
from plan_helpers import stored_user, threshold_events

from authkeep.core.models import utcnow
from authkeep.keys.models import ApiKey
from authkeep.plans.entitlements import charge_quota, period_start
from authkeep.plans.thresholds import (
    crossed_percents,
    note_credits,
    note_expiring_keys,
    note_quota,
)
from support.secrets_scan import FIGURES
from users.identity_helpers import database

JUNE = datetime(2031, 6, 14, 12, 0, tzinfo=UTC)
CONCURRENT_CHARGES = 20
TRIALS = 3


@pytest.mark.parametrize(
    ("before", "after", "limit", "crossed"),
    [
        (0, 79, 100, []),
        (79, 80, 100, [80]),
        (80, 89, 100, []),
        (0, 100, 100, [80, 90, 100]),
        (95, 120, 100, [100]),
        (100, 130, 100, []),
        (7, 8, 10, [80]),
        (8, 9, 10, [90]),
        (0, 1, 1, [80, 90, 100]),
        (0, 0, 0, []),
        (5, 5, 10, []),
    ],
)
def test_crossings(before: int, after: int, limit: int, crossed: list[int]) -> None:
    assert crossed_percents(before, after, limit) == crossed


async def test_each_quota_threshold_fires_once_per_month(app: FastAPI) -> None:
    user_id = await stored_user(app)
    subject = f"user:{user_id}:api"
    async with database(app).session_scope() as db:
        assert await note_quota(db, user_id, "api", 0, 85, 100, period_start(JUNE)) == ["quota.80"]
        assert await note_quota(db, user_id, "api", 0, 85, 100, period_start(JUNE)) == []
        assert await note_quota(db, user_id, "api", 85, 100, 100, period_start(JUNE)) == [
            "quota.90",
            "quota.100",
        ]
        july = period_start(JUNE + timedelta(days=20))
        assert await note_quota(db, user_id, "api", 0, 80, 100, july) == ["quota.80"]
    events = await threshold_events(app, subject)
    assert sorted((e.kind, e.period) for e in events) == [
        ("quota.100", "2031-06"),
        ("quota.80", "2031-06"),
        ("quota.80", "2031-07"),
        ("quota.90", "2031-06"),
    ]
    first = next(e for e in events if (e.kind, e.period) == ("quota.80", "2031-06"))
    assert first.payload == {
        "user_id": str(user_id),
        "feature": "api",
        "threshold": 80,
        "used": 85,
        "limit": 100,
        "period": "2031-06",
    }
    assert (first.attempts, first.delivered_at, first.last_error) == (0, None, None)


async def charge_and_note(app: FastAPI, user_id: uuid.UUID, feature: str, limit: int) -> bool:
    """What the verify pipeline does for one call: charge 1 unit, then note the crossing, in one
    unit of work."""
    now = utcnow()
    async with database(app).session_scope() as db:
        charge = await charge_quota(db, user_id, feature, 1, limit, now=now)
        if charge.allowed:
            await note_quota(
                db, user_id, feature, charge.used - 1, charge.used, limit, period_start(now)
            )
        return charge.allowed


async def test_twenty_concurrent_charges_fire_each_threshold_once_FI_RACE_02(
    app: FastAPI, migrated_url: str
) -> None:
    engine = "postgresql" if migrated_url.startswith("postgresql") else "sqlite"
    user_id = await stored_user(app)
    duplicates = 0
    for _ in range(TRIALS):
        feature = f"api-{secrets.token_hex(3)}"
        limit = CONCURRENT_CHARGES - 2  # the last two calls are refused
        results = await asyncio.gather(
            *(charge_and_note(app, user_id, feature, limit) for _ in range(CONCURRENT_CHARGES))
        )
        assert sum(results) == limit
        kinds = sorted(e.kind for e in await threshold_events(app, f"user:{user_id}:{feature}"))
        assert kinds == ["quota.100", "quota.80", "quota.90"]
        duplicates += len(kinds) - 3
    FIGURES.append(
        f"threshold events {engine}: {TRIALS} trials x {CONCURRENT_CHARGES} concurrent charges, "
        f"{duplicates} duplicate events"
    )


async def test_the_same_crossing_noted_by_twenty_callers_is_one_event(app: FastAPI) -> None:
    """The unique (subject, kind, period) holds even when callers report overlapping ranges."""
    user_id = await stored_user(app)

    async def note() -> list[str]:
        async with database(app).session_scope() as db:
            return await note_quota(db, user_id, "api", 79, 80, 100, period_start(JUNE))

    results = await asyncio.gather(*(note() for _ in range(CONCURRENT_CHARGES)))
    assert sorted(map(len, results)) == [0] * (CONCURRENT_CHARGES - 1) + [1]
    assert len(await threshold_events(app, f"user:{user_id}:api")) == 1


async def new_key(
    app: FastAPI,
    user_id: uuid.UUID,
    *,
    refill: str | None = None,
    expires_at: datetime | None = None,
    **fields: object,
) -> uuid.UUID:
    key = ApiKey(
        user_id=user_id,
        name="ci",
        prefix="ak",
        start="ak_test",
        key_hash=secrets.token_hex(32),
        refill_interval=refill,
        refill_amount=10 if refill else None,
        expires_at=expires_at,
        **fields,
    )
    async with database(app).session_scope() as db:
        db.add(key)
    return key.id


async def test_credits_exhausted_once_per_refill_cycle(app: FastAPI) -> None:
    user_id = await stored_user(app)
    once = await new_key(app, user_id)
    daily = await new_key(app, user_id, refill="day")
    monthly = await new_key(app, user_id, refill="month", external_id="acme")
    async with database(app).session_scope() as db:
        assert await note_credits(db, once, str(user_id), 3, now=JUNE) is False
        assert await note_credits(db, once, str(user_id), None, now=JUNE) is False
        assert await note_credits(db, once, str(user_id), 0, now=JUNE) is True
        assert await note_credits(db, once, str(user_id), 0, now=JUNE + timedelta(days=40)) is False
        assert await note_credits(db, daily, str(user_id), 0, now=JUNE) is True
        assert await note_credits(db, daily, str(user_id), 0, now=JUNE) is False
        assert await note_credits(db, daily, str(user_id), 0, now=JUNE + timedelta(days=1)) is True
        assert await note_credits(db, monthly, "acme", 0, now=JUNE) is True
    periods = {
        (e.subject, e.period) for e in await threshold_events(app) if e.kind == "credits.exhausted"
    }
    assert periods == {
        (f"key:{once}", "once"),
        (f"key:{daily}", "2031-06-14"),
        (f"key:{daily}", "2031-06-15"),
        (f"key:{monthly}", "2031-06"),
    }
    (acme,) = [e for e in await threshold_events(app, f"key:{monthly}")]
    assert acme.payload == {
        "key_id": str(monthly),
        "owner": "acme",
        "remaining": 0,
        "period": "2031-06",
    }


async def test_keys_expiring_within_the_warning_window_are_noted_once(app: FastAPI) -> None:
    user_id = await stored_user(app)
    now = utcnow()
    soon = await new_key(app, user_id, expires_at=now + timedelta(days=3), external_id="acme")
    await new_key(app, user_id, expires_at=now + timedelta(days=30))  # outside the window
    await new_key(app, user_id, expires_at=now - timedelta(days=1))  # already expired
    await new_key(app, user_id)  # never expires
    await new_key(app, user_id, expires_at=now + timedelta(days=2), revoked_at=now)
    await new_key(app, user_id, expires_at=now + timedelta(days=2), enabled=False)
    await new_key(app, user_id, expires_at=now + timedelta(days=2), replaced_by=uuid.uuid4())
    async with database(app).session_scope() as db:
        assert await note_expiring_keys(db, 7) == 1
    async with database(app).session_scope() as db:
        assert await note_expiring_keys(db, 7) == 0
    (event,) = [e for e in await threshold_events(app) if e.kind == "key.expiring"]
    expires = now + timedelta(days=3)
    assert (event.subject, event.period) == (f"key:{soon}", expires.date().isoformat())
    assert event.payload["owner"] == "acme"
    assert datetime.fromisoformat(event.payload["expires_at"]) == expires
    # A new expiry date is a new period: the owner hears about the key again.
    async with database(app).session_scope() as db:
        key = await db.get(ApiKey, soon)
        assert key is not None
        key.expires_at = now + timedelta(days=5)
    async with database(app).session_scope() as db:
        assert await note_expiring_keys(db, 7) == 1
