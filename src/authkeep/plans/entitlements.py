"""What a user's plan grants, and the atomic plan-quota charge (SPEC §7, CHK-AC-08).

A feature is granted only through a subscription whose status is exactly "active" (seed 004
granted features to canceled and past-due subscriptions too). Quotas are per UTC calendar month
and are checked and incremented in one statement, so racing calls never overshoot.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from authkeep.core.models import utcnow
from authkeep.core.upsert import insert_for
from authkeep.plans.models import Plan, QuotaCounter, Subscription

ACTIVE = "active"


@dataclass(frozen=True)
class Grant:
    """The owner's active plan, if any: its slug, features and monthly limits."""

    plan: str | None = None
    features: frozenset[str] = frozenset()
    limits: dict[str, int] = field(default_factory=dict)

    def allows(self, feature: str) -> bool:
        return feature in self.features


@dataclass(frozen=True)
class QuotaCharge:
    allowed: bool
    used: int
    limit: int


def balance(limit: int | None, used: int) -> int | None:
    """Units left this period: `limit - used`, never below 0; None when the feature is unmetered."""
    return None if limit is None else max(0, limit - used)


def period_start(moment: datetime) -> datetime:
    """The UTC calendar month that contains `moment`."""
    moment = moment.astimezone(UTC)
    return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


async def grant_for(db: AsyncSession, user_id: uuid.UUID) -> Grant:
    """The user's grant from their newest active subscription (none → no features)."""
    row = (
        await db.execute(
            select(Plan.slug, Plan.features, Plan.limits)
            .join(Subscription, Subscription.plan_id == Plan.id)
            .where(Subscription.user_id == user_id, Subscription.status == ACTIVE)
            .order_by(Subscription.created_at.desc())
            .limit(1)
        )
    ).first()
    if row is None:
        return Grant()
    slug, features, limits = row
    return Grant(slug, frozenset(features or ()), {k: int(v) for k, v in (limits or {}).items()})


async def quota_used(
    db: AsyncSession, user_id: uuid.UUID, features: list[str], now: datetime | None = None
) -> dict[str, int]:
    """Units used this period per feature (0 when nothing was charged yet)."""
    if not features:
        return {}
    rows = await db.execute(
        select(QuotaCounter.feature, QuotaCounter.used).where(
            QuotaCounter.user_id == user_id,
            QuotaCounter.feature.in_(features),
            QuotaCounter.period_start == period_start(now or utcnow()),
        )
    )
    used = {feature: 0 for feature in features}
    used.update({feature: int(value) for feature, value in rows.all()})
    return used


async def charge_quota(
    db: AsyncSession,
    user_id: uuid.UUID,
    feature: str,
    cost: int,
    limit: int,
    now: datetime | None = None,
) -> QuotaCharge:
    """Add `cost` to this period's counter only if the result stays within `limit`.

    One conditional UPDATE does check and increment together; the row is created first with
    INSERT … ON CONFLICT DO NOTHING so the UPDATE always has a row to lock.
    """
    period = period_start(now or utcnow())
    await db.execute(
        insert_for(db, QuotaCounter)
        .values(user_id=user_id, feature=feature, period_start=period, used=0)
        .on_conflict_do_nothing()
    )
    key = (
        QuotaCounter.user_id == user_id,
        QuotaCounter.feature == feature,
        QuotaCounter.period_start == period,
    )
    used = await db.scalar(
        update(QuotaCounter)
        .where(*key, QuotaCounter.used + cost <= limit)
        .values(used=QuotaCounter.used + cost)
        .returning(QuotaCounter.used)
    )
    if used is not None:
        return QuotaCharge(True, int(used), limit)
    current = await db.scalar(select(QuotaCounter.used).where(*key))
    return QuotaCharge(False, int(current or 0), limit)
