"""The usage meter: counts verifications in memory and writes them in batched atomic upserts
(SPEC §7, RELIABILITY CHK-AK-05, FI-DB-10).

`record` runs on the verify hot path: it only adds to an in-memory bucket per (key, outcome,
UTC hour) and notes the key's latest use. A background task flushes every
`AUTHKEEP_USAGE_FLUSH_SECONDS`, or sooner once `AUTHKEEP_USAGE_FLUSH_EVENTS` events are pending;
`stop()` (application shutdown) flushes whatever is left.

Exactly once: a flush swaps the buffer out before writing and writes hour rows, day rows and
`last_used_at` in one unit of work. If that unit of work fails it rolled back, wrote nothing,
and the batch is merged back into the buffer for the next attempt. What a crash (SIGKILL) can
lose is bounded by what was pending: about one flush interval of traffic (docs/usage.md).

Memory is bounded: at most `max_buckets` distinct (key, outcome, hour) buckets are held,
counting a batch being written. At the cap, events for buckets already held are still counted
and events that would need a new bucket are dropped, counted in `dropped` and logged. The cap is
reached only when the database has been unreachable for a long time under traffic from very
many keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from authkeep.config import Settings
from authkeep.core.db import Database
from authkeep.usage.service import (
    DAY_SECONDS,
    HOUR_SECONDS,
    Granularity,
    RollupDelta,
    add_usage,
)

logger = logging.getLogger("authkeep.usage")

DEFAULT_MAX_BUCKETS = 100_000
# On shutdown, how long the final flush keeps retrying a database that does not answer.
STOP_FLUSH_SECONDS = 10.0
HOURS_PER_DAY = DAY_SECONDS // HOUR_SECONDS

# (key id, outcome, hours since the Unix epoch): one UTC hour bucket.
Slot = tuple[uuid.UUID, str, int]


@dataclass
class Bucket:
    user_id: uuid.UUID
    owner: str
    count: int = 0
    units: int = 0


@dataclass
class Batch:
    """Everything counted since the last flush."""

    buckets: dict[Slot, Bucket] = field(default_factory=dict)
    # key id → latest use (Unix seconds)
    last_used: dict[uuid.UUID, float] = field(default_factory=dict)
    events: int = 0

    def deltas(self) -> list[RollupDelta]:
        """The hour rows, plus the day rows derived from them."""
        days: dict[Slot, Bucket] = {}
        hours: list[RollupDelta] = []
        for (key_id, outcome, hour), bucket in self.buckets.items():
            hours.append(_delta(key_id, outcome, "hour", hour * HOUR_SECONDS, bucket))
            day = days.setdefault(
                (key_id, outcome, hour // HOURS_PER_DAY), Bucket(bucket.user_id, bucket.owner)
            )
            day.count += bucket.count
            day.units += bucket.units
        return hours + [
            _delta(key_id, outcome, "day", day * DAY_SECONDS, bucket)
            for (key_id, outcome, day), bucket in days.items()
        ]

    def last_used_times(self) -> dict[uuid.UUID, datetime]:
        return {key_id: datetime.fromtimestamp(at, UTC) for key_id, at in self.last_used.items()}


def _delta(
    key_id: uuid.UUID, outcome: str, granularity: Granularity, start: int, bucket: Bucket
) -> RollupDelta:
    return RollupDelta(
        key_id=key_id,
        outcome=outcome,
        granularity=granularity,
        bucket_start=datetime.fromtimestamp(start, UTC),
        user_id=bucket.user_id,
        owner=bucket.owner,
        count=bucket.count,
        units=bucket.units,
    )


async def _wait(event: asyncio.Event, seconds: float) -> None:
    """Until `event` is set or `seconds` have passed, whichever comes first."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)


class UsageMeter:
    """Counts verifications per key, outcome and hour; a background service flushes them.

    `record` and `record_many` must be called from the event loop's thread (every route is).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        max_buckets: int = DEFAULT_MAX_BUCKETS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.max_buckets = max_buckets
        self.clock = clock
        # Events refused at the bucket cap since start (never written).
        self.dropped = 0
        self._dropped_logged = 0
        self._pending = Batch()
        self._in_flight = 0
        self._in_flight_events = 0
        self._flush_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._database: Database | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def pending_events(self) -> int:
        """Events counted in memory and not yet written (including a batch being written)."""
        return self._pending.events + self._in_flight_events

    def record(
        self, key_id: uuid.UUID, user_id: uuid.UUID, owner: str, outcome: str, units: int
    ) -> None:
        """Count one verification. Never blocks and never touches the database."""
        self.record_many(key_id, user_id, owner, outcome, 1, units)

    def record_many(
        self,
        key_id: uuid.UUID,
        user_id: uuid.UUID,
        owner: str,
        outcome: str,
        count: int,
        units: int,
    ) -> None:
        """Count `count` verifications costing `units` in total (a client's cached calls)."""
        if not self.settings.usage_metering or count <= 0:
            return
        now = self.clock()
        pending = self._pending
        slot = (key_id, outcome, int(now // HOUR_SECONDS))
        bucket = pending.buckets.get(slot)
        if bucket is None:
            if len(pending.buckets) + self._in_flight >= self.max_buckets:
                self.dropped += count
                return
            bucket = pending.buckets[slot] = Bucket(user_id, owner)
        bucket.count += count
        bucket.units += units
        if now > pending.last_used.get(key_id, 0.0):
            pending.last_used[key_id] = now
        pending.events += count
        if pending.events >= self.settings.usage_flush_events:
            self._wake.set()

    async def flush(self) -> int:
        """Write everything pending in one unit of work; return the events written.

        On failure the batch goes back into the buffer (nothing was written: the unit of work
        rolled back) and the error propagates.
        """
        if self._database is None:
            raise RuntimeError("the usage meter has not been started")
        async with self._flush_lock:
            batch, self._pending = self._pending, Batch()
            if not batch.buckets:
                return 0
            self._in_flight, self._in_flight_events = len(batch.buckets), batch.events
            try:
                async with self._database.session_scope() as db:
                    await add_usage(db, batch.deltas(), batch.last_used_times())
            except BaseException:
                self._merge_back(batch)
                raise
            finally:
                self._in_flight = self._in_flight_events = 0
            return batch.events

    def _merge_back(self, batch: Batch) -> None:
        pending = self._pending
        for slot, bucket in batch.buckets.items():
            mine = pending.buckets.get(slot)
            if mine is None:
                pending.buckets[slot] = bucket
            else:
                mine.count += bucket.count
                mine.units += bucket.units
        for key_id, at in batch.last_used.items():
            if at > pending.last_used.get(key_id, 0.0):
                pending.last_used[key_id] = at
        pending.events += batch.events

    async def _try_flush(self) -> bool:
        try:
            await self.flush()
        except Exception as exc:
            # The class only: driver messages can quote SQL and parameters.
            logger.warning(
                "usage flush failed (%s); %d events kept for the next attempt",
                type(exc).__name__,
                self.pending_events,
            )
            return False
        finally:
            self._log_drops()
        return True

    def _log_drops(self) -> None:
        if self.dropped > self._dropped_logged:
            logger.error(
                "usage meter full (%d buckets pending): %d events not counted",
                self.max_buckets,
                self.dropped - self._dropped_logged,
            )
            self._dropped_logged = self.dropped

    async def _run(self) -> None:
        interval = self.settings.usage_flush_seconds
        while not self._stop_requested.is_set():
            await _wait(self._wake, interval)
            self._wake.clear()
            if self._stop_requested.is_set():
                return  # stop() writes the rest
            if not await self._try_flush():
                # The database is away: retry after a full interval, however much piles up.
                await _wait(self._stop_requested, interval)

    async def start(self, database: Database) -> None:
        self._database = database
        if self.settings.usage_metering:
            self._task = asyncio.create_task(self._run(), name="usage-meter")

    async def stop(self) -> None:
        """Stop the flusher and write everything left, retrying for up to STOP_FLUSH_SECONDS."""
        if self._task is None:
            return
        self._stop_requested.set()
        self._wake.set()
        await self._task
        self._task = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STOP_FLUSH_SECONDS
        while not await self._try_flush():
            if loop.time() >= deadline:
                logger.error(
                    "usage: %d events could not be written before shutdown", self.pending_events
                )
                return
            await asyncio.sleep(min(self.settings.usage_flush_seconds, 1.0))
