"""Threshold crossings become outbox rows (`ThresholdEvent`) that the webhook deliverer sends.

Each event is written with INSERT … ON CONFLICT DO NOTHING on the unique (subject, kind, period),
in the caller's unit of work: it exists exactly when the charge that caused it committed, and
a threshold fires at most once per period however many callers cross it together.

Kinds, subjects and periods:
- `quota.80`, `quota.90`, `quota.100` — subject `user:<user id>:<feature>`, period the UTC month
  of the quota (`2031-06`).
- `credits.exhausted` — subject `key:<key id>`, period the refill cycle (`2031-06-14` for a daily
  refill, `2031-06` for a monthly one) or `once` for a key without refill.
- `key.expiring` — subject `key:<key id>`, period the key's expiry date (`2031-06-30`); found by
  the deliverer's periodic scan (`note_expiring_keys`).
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from authkeep.core.models import utcnow
from authkeep.core.upsert import insert_for
from authkeep.keys.models import ApiKey
from authkeep.plans.models import ThresholdEvent

QUOTA_PERCENTS = (80, 90, 100)
CREDITS_EXHAUSTED = "credits.exhausted"
KEY_EXPIRING = "key.expiring"
NO_REFILL_PERIOD = "once"


def quota_kind(percent: int) -> str:
    return f"quota.{percent}"


def month_label(moment: datetime) -> str:
    """The period label of a UTC month: `2031-06`."""
    return moment.strftime("%Y-%m")


def crossed_percents(used_before: int, used_after: int, limit: int) -> list[int]:
    """The thresholds (80, 90, 100 % of `limit`) that lie in (used_before, used_after]."""
    if limit <= 0 or used_after <= used_before:
        return []
    return [p for p in QUOTA_PERCENTS if used_before * 100 < p * limit <= used_after * 100]


async def record_event(
    db: AsyncSession, subject: str, kind: str, period: str, payload: dict[str, Any]
) -> bool:
    """Add one event unless (subject, kind, period) exists already; True when it is new."""
    now = utcnow()
    inserted = await db.scalar(
        insert_for(db, ThresholdEvent)
        .values(
            id=uuid.uuid4(),
            subject=subject,
            kind=kind,
            period=period,
            payload=payload,
            created_at=now,
            attempts=0,
            next_attempt_at=now,
        )
        .on_conflict_do_nothing()
        .returning(ThresholdEvent.id)
    )
    return inserted is not None


async def note_quota(
    db: AsyncSession,
    user_id: uuid.UUID,
    feature: str,
    used_before: int,
    used_after: int,
    limit: int,
    period: datetime,
) -> list[str]:
    """Record the quota thresholds one charge crossed; returns the kinds newly recorded.

    Call it in the unit of work of the charge, after `entitlements.charge_quota` allowed it:
    `used_after` is the charge's `used`, `used_before` is `used_after - cost`, and `period` is
    `entitlements.period_start(now)` for the same `now` the charge used. Writes nothing (and
    costs no query) when no threshold lies in (used_before, used_after].
    """
    kinds: list[str] = []
    for percent in crossed_percents(used_before, used_after, limit):
        payload = {
            "user_id": str(user_id),
            "feature": feature,
            "threshold": percent,
            "used": used_after,
            "limit": limit,
            "period": month_label(period),
        }
        subject = f"user:{user_id}:{feature}"
        if await record_event(db, subject, quota_kind(percent), month_label(period), payload):
            kinds.append(quota_kind(percent))
    return kinds


def credits_period(refill_interval: str | None, moment: datetime) -> str:
    """The refill cycle that contains `moment` (UTC day or month), or `once` without refill."""
    if refill_interval == "day":
        return moment.strftime("%Y-%m-%d")
    if refill_interval == "month":
        return month_label(moment)
    return NO_REFILL_PERIOD


async def note_credits(
    db: AsyncSession,
    key_id: uuid.UUID,
    owner: str,
    remaining: int | None,
    now: datetime | None = None,
) -> bool:
    """Record `credits.exhausted` when a key's credits just reached 0; True when newly recorded.

    Call it in the unit of work of the credit decrement with the key's remaining credits after
    it. Does nothing (no query) unless `remaining` is 0; then reads the key's refill interval to
    name the period, so the event fires once per refill cycle (once ever without refill).
    """
    if remaining is None or remaining > 0:
        return False
    moment = now or utcnow()
    interval = await db.scalar(select(ApiKey.refill_interval).where(ApiKey.id == key_id))
    period = credits_period(interval, moment)
    payload = {"key_id": str(key_id), "owner": owner, "remaining": 0, "period": period}
    return await record_event(db, f"key:{key_id}", CREDITS_EXHAUSTED, period, payload)


async def note_expiring_keys(
    db: AsyncSession, warning_days: int, now: datetime | None = None
) -> int:
    """Record `key.expiring` for every live key expiring within `warning_days`; returns how many
    events are new. Revoked, disabled, replaced (rerolled) and already expired keys are skipped.
    """
    moment = now or utcnow()
    keys = await db.execute(
        select(ApiKey.id, ApiKey.user_id, ApiKey.external_id, ApiKey.name, ApiKey.expires_at).where(
            ApiKey.expires_at > moment,
            ApiKey.expires_at <= moment + timedelta(days=warning_days),
            ApiKey.revoked_at.is_(None),
            ApiKey.enabled.is_(True),
            ApiKey.replaced_by.is_(None),
        )
    )
    created = 0
    for key_id, user_id, external_id, name, expires_at in keys.all():
        assert expires_at is not None  # selected by expires_at > moment
        payload = {
            "key_id": str(key_id),
            "owner": external_id or str(user_id),
            "name": name,
            "expires_at": expires_at.isoformat(),
        }
        period = expires_at.date().isoformat()
        created += await record_event(db, f"key:{key_id}", KEY_EXPIRING, period, payload)
    return created
