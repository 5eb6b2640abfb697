"""Usage rollups in the database: the meter's batched atomic increments and the reads behind
`GET /api/usage`.

Writes are `INSERT … ON CONFLICT DO UPDATE SET count = count + excluded.count`, so concurrent
flushes (several workers, several nodes) add up instead of overwriting each other, and
`last_used_at` only ever moves forward. Rows are written in primary-key order, so two flushes
touching the same rows lock them in the same order and cannot deadlock each other.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, cast

from sqlalchemy import Table, bindparam, exists, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from authkeep.core.upsert import insert_for
from authkeep.keys.models import ApiKey
from authkeep.usage.models import UsageRollup

Granularity = Literal["hour", "day"]
HOUR_SECONDS = 3600
DAY_SECONDS = 86_400
# Rows per INSERT statement: 8 parameters each stays far below SQLite's and asyncpg's limits.
ROWS_PER_STATEMENT = 500


@dataclass(frozen=True)
class RollupDelta:
    """What one flush adds to one (key, outcome, granularity, bucket) row."""

    key_id: uuid.UUID
    outcome: str
    granularity: Granularity
    bucket_start: datetime
    user_id: uuid.UUID
    owner: str
    count: int
    units: int

    def sort_key(self) -> tuple[str, str, str, datetime]:
        return (str(self.key_id), self.outcome, self.granularity, self.bucket_start)


async def add_usage(
    db: AsyncSession, deltas: Sequence[RollupDelta], last_used: dict[uuid.UUID, datetime]
) -> None:
    """Add `deltas` to the rollups and move each key's `last_used_at` forward, in `db`'s unit
    of work (the caller commits). Single statements only, so SQLite never upgrades a read lock.
    """
    ordered = sorted(deltas, key=RollupDelta.sort_key)
    for chunk in _chunks(ordered, ROWS_PER_STATEMENT):
        insert = insert_for(db, UsageRollup).values([_row(delta) for delta in chunk])
        await db.execute(
            insert.on_conflict_do_update(
                index_elements=["key_id", "outcome", "granularity", "bucket_start"],
                set_={
                    "count": UsageRollup.count + insert.excluded["count"],
                    "units": UsageRollup.units + insert.excluded["units"],
                },
            )
        )
    if last_used:
        await db.execute(
            _MOVE_LAST_USED_FORWARD,
            [
                {"used_key_id": key_id, "used_at": last_used[key_id]}
                for key_id in sorted(last_used, key=str)
            ],
        )


_api_keys = cast(Table, ApiKey.__table__)
# Only forward: an older timestamp (a late flush from another worker) never replaces a newer
# one. `updated_at` is kept as is: being used is not a change to the key.
_MOVE_LAST_USED_FORWARD = (
    update(_api_keys)
    .where(
        _api_keys.c.id == bindparam("used_key_id"),
        or_(
            _api_keys.c.last_used_at.is_(None),
            _api_keys.c.last_used_at < bindparam("used_at"),
        ),
    )
    .values(last_used_at=bindparam("used_at"), updated_at=_api_keys.c.updated_at)
)


def _row(delta: RollupDelta) -> dict[str, Any]:
    return {
        "key_id": delta.key_id,
        "outcome": delta.outcome,
        "granularity": delta.granularity,
        "bucket_start": delta.bucket_start,
        "user_id": delta.user_id,
        "owner": delta.owner,
        "count": delta.count,
        "units": delta.units,
    }


def _chunks(items: Sequence[RollupDelta], size: int) -> Iterator[Sequence[RollupDelta]]:
    for first in range(0, len(items), size):
        yield items[first : first + size]


# ---- reads ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class UsageFilter:
    """One user's rollups of one granularity with `start <= bucket_start < end`."""

    user_id: uuid.UUID
    granularity: Granularity
    start: datetime
    end: datetime
    key_id: uuid.UUID | None = None
    owner: str | None = None
    outcome: str | None = None


async def usage_rows(db: AsyncSession, where: UsageFilter, limit: int) -> list[UsageRollup]:
    """At most `limit` rows, oldest bucket first, then by key and outcome."""
    query = (
        select(UsageRollup)
        .where(
            UsageRollup.user_id == where.user_id,
            UsageRollup.granularity == where.granularity,
            UsageRollup.bucket_start >= where.start,
            UsageRollup.bucket_start < where.end,
        )
        .order_by(UsageRollup.bucket_start, UsageRollup.key_id, UsageRollup.outcome)
        .limit(limit)
    )
    if where.key_id is not None:
        query = query.where(UsageRollup.key_id == where.key_id)
    if where.owner is not None:
        query = query.where(UsageRollup.owner == where.owner)
    if where.outcome is not None:
        query = query.where(UsageRollup.outcome == where.outcome)
    return list((await db.scalars(query)).all())


async def key_is_users(db: AsyncSession, key_id: uuid.UUID, user_id: uuid.UUID) -> bool:
    """True when the key belongs to the user now, or did when it was used (deleted keys keep
    their history). Another user's key is indistinguishable from one that never existed."""
    owned = exists().where(ApiKey.id == key_id, ApiKey.user_id == user_id)
    used = exists().where(UsageRollup.key_id == key_id, UsageRollup.user_id == user_id)
    return bool(await db.scalar(select(or_(owned, used))))
