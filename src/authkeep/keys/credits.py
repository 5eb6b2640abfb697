"""Spending a key's credits: check, refill and decrement in one statement (CHK-AC-08).

    UPDATE api_keys
       SET credits_remaining = <balance> - :cost, refilled_at = <refilled>
     WHERE id = :id AND enabled AND revoked_at IS NULL AND <balance> >= :cost
    RETURNING credits_remaining

`<balance>` is `refill_amount` when a refill is due (the key has a refill and its last refill —
or its creation — lies before the current UTC day or month), else `credits_remaining`. Racing
calls serialise on the row, so the balance never goes below zero; the refill happens at most
once per period because the same statement moves `refilled_at` into the current period. A key
revoked or disabled in the meantime is refused by the same statement.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import ColumnElement, and_, case, func, literal, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from authkeep.core.models import UTCDateTime
from authkeep.keys.models import ApiKey
from authkeep.plans.entitlements import period_start


def day_start(moment: datetime) -> datetime:
    """The UTC day that contains `moment`."""
    return moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def _refill_due(now: datetime) -> ColumnElement[bool]:
    current_period = case(
        (ApiKey.refill_interval == "day", literal(day_start(now), UTCDateTime)),
        else_=literal(period_start(now), UTCDateTime),
    )
    return and_(
        ApiKey.refill_interval.is_not(None),
        ApiKey.refill_amount.is_not(None),
        func.coalesce(ApiKey.refilled_at, ApiKey.created_at) < current_period,
    )


async def spend_credits(
    db: AsyncSession, key_id: uuid.UUID, cost: int, now: datetime
) -> int | None:
    """Take `cost` credits (after a due refill) and return what is left, or None when the key
    has fewer than `cost`, has no credits, or is gone, disabled or revoked."""
    due = _refill_due(now)
    balance = case((due, ApiKey.refill_amount), else_=ApiKey.credits_remaining)
    remaining = await db.scalar(
        update(ApiKey)
        .where(
            ApiKey.id == key_id,
            ApiKey.enabled.is_(True),
            ApiKey.revoked_at.is_(None),
            ApiKey.credits_remaining.is_not(None),
            balance >= cost,
        )
        .values(
            credits_remaining=balance - cost,
            refilled_at=case((due, literal(now, UTCDateTime)), else_=ApiKey.refilled_at),
            # Spending is not an edit of the key.
            updated_at=ApiKey.updated_at,
        )
        .returning(ApiKey.credits_remaining)
        .execution_options(synchronize_session=False)
    )
    return None if remaining is None else int(remaining)


@dataclass(frozen=True)
class CreditState:
    usable: bool
    credits: int | None


async def credit_state(db: AsyncSession, key_id: uuid.UUID) -> CreditState | None:
    """Why `spend_credits` refused: the key's state now (None when the key is gone)."""
    row = (
        await db.execute(
            select(ApiKey.enabled, ApiKey.revoked_at, ApiKey.credits_remaining).where(
                ApiKey.id == key_id
            )
        )
    ).first()
    if row is None:
        return None
    enabled, revoked_at, credits = row
    return CreditState(bool(enabled) and revoked_at is None, credits)
