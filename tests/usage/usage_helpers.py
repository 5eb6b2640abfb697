"""Helpers for the usage tests: a settable clock for meters, rollups read back from the
database, and rows written the way the meter writes them."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from authkeep.config import Settings
from authkeep.core.db import Database
from authkeep.keys.models import ApiKey
from authkeep.usage.meter import DEFAULT_MAX_BUCKETS, UsageMeter
from authkeep.usage.models import UsageRollup
from authkeep.usage.service import Granularity, RollupDelta, add_usage

RollupKey = tuple[uuid.UUID, str, str, datetime]


class Clock:
    """Wall-clock seconds that a test sets: `UsageMeter(settings, clock=clock)`."""

    def __init__(self, moment: datetime) -> None:
        self.now = moment.timestamp()

    def set(self, moment: datetime) -> None:
        self.now = moment.timestamp()

    def __call__(self) -> float:
        return self.now


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


async def rollups(database: Database) -> list[UsageRollup]:
    async with database.session_scope() as db:
        return list((await db.scalars(select(UsageRollup))).all())


async def counts(database: Database, granularity: Granularity) -> dict[RollupKey, tuple[int, int]]:
    """(key id, outcome, granularity, bucket start) → (count, units)."""
    return {
        (r.key_id, r.outcome, r.granularity, r.bucket_start): (r.count, r.units)
        for r in await rollups(database)
        if r.granularity == granularity
    }


async def total_count(database: Database, granularity: Granularity) -> int:
    return sum(count for count, _ in (await counts(database, granularity)).values())


async def counts_by_outcome(database: Database, granularity: Granularity) -> Counter[str]:
    totals: Counter[str] = Counter()
    for (_, outcome, _, _), (count, _) in (await counts(database, granularity)).items():
        totals[outcome] += count
    return totals


async def last_used(database: Database, key_id: uuid.UUID) -> datetime | None:
    async with database.session_scope() as db:
        return await db.scalar(select(ApiKey.last_used_at).where(ApiKey.id == key_id))


async def seed(database: Database, *deltas: RollupDelta) -> None:
    """Write rollup rows the way a meter flush does."""
    async with database.session_scope() as db:
        await add_usage(db, list(deltas), {})


def delta(
    key_id: uuid.UUID,
    user_id: uuid.UUID,
    bucket_start: datetime,
    *,
    outcome: str = "VALID",
    granularity: Granularity = "hour",
    owner: str | None = None,
    count: int = 1,
    units: int | None = None,
) -> RollupDelta:
    return RollupDelta(
        key_id=key_id,
        outcome=outcome,
        granularity=granularity,
        bucket_start=bucket_start,
        user_id=user_id,
        owner=owner if owner is not None else str(user_id),
        count=count,
        units=count if units is None else units,
    )


@asynccontextmanager
async def running_meter(
    database: Database,
    settings: Settings,
    clock: Callable[[], float] = time.time,
    max_buckets: int = DEFAULT_MAX_BUCKETS,
    **overrides: Any,
) -> AsyncIterator[UsageMeter]:
    """A started meter on `database`; its flusher waits a minute unless `overrides` say
    otherwise, so the test flushes when it chooses. Stopped (final flush) on exit."""
    overrides.setdefault("usage_flush_seconds", 60)
    meter = UsageMeter(settings.model_copy(update=overrides), clock=clock, max_buckets=max_buckets)
    await meter.start(database)
    try:
        yield meter
    finally:
        await meter.stop()


async def eventually(check: Callable[[], Awaitable[bool]], *, within: float = 30.0) -> None:
    """Wait until `check()` is true; fail when it never becomes true. A bound on waiting for
    background work, not a speed assertion."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"condition not reached within {within} s")
        await asyncio.sleep(0.02)
