"""The usage meter on both engines: batched atomic upserts of hour and day rows, concurrent
flushers adding up (CHK-AK-05, FI-DB-12), a failed flush writing nothing and being retried
exactly once, the bucket cap, the switch, the early flush and the shutdown flush, and
`last_used_at` only moving forward."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from contextlib import AsyncExitStack
from datetime import datetime, timedelta

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from usage_helpers import (
    Clock,
    counts,
    eventually,
    last_used,
    rollups,
    running_meter,
    total_count,
    utc,
)

from authkeep.config import Settings
from authkeep.core.db import Database
from authkeep.keys.models import ApiKey
from authkeep.usage.meter import UsageMeter
from keys.key_helpers import create_key
from support.secrets_scan import FIGURES
from users.identity_helpers import bearer, database, new_user, started_app

KEY_A = uuid.UUID("00000000-0000-4000-8000-00000000000a")
KEY_B = uuid.UUID("00000000-0000-4000-8000-00000000000b")
USER = uuid.UUID("00000000-0000-4000-8000-000000000001")


async def nothing_pending(meter: UsageMeter) -> bool:
    return meter.pending_events == 0


async def stored_at_least(db: Database, events: int) -> bool:
    return await total_count(db, "hour") >= events


def settings_of(app: FastAPI) -> Settings:
    settings: Settings = app.state.settings
    return settings


async def test_a_flush_writes_hour_and_day_rows_and_a_second_one_adds_to_them_CHK_AK_05(
    app: FastAPI,
) -> None:
    clock = Clock(utc(2031, 3, 1, 23, 30))
    db = database(app)
    async with running_meter(db, settings_of(app), clock) as meter:
        for _ in range(3):
            meter.record(KEY_A, USER, "acme", "VALID", 5)
        meter.record(KEY_A, USER, "acme", "RATE_LIMITED", 1)
        clock.set(utc(2031, 3, 2, 0, 10))
        meter.record(KEY_A, USER, "acme", "VALID", 1)
        meter.record_many(KEY_B, USER, "other", "VALID", 4, 40)
        assert meter.pending_events == 9
        assert await meter.flush() == 9
        assert meter.pending_events == 0

        assert await counts(db, "hour") == {
            (KEY_A, "VALID", "hour", utc(2031, 3, 1, 23)): (3, 15),
            (KEY_A, "RATE_LIMITED", "hour", utc(2031, 3, 1, 23)): (1, 1),
            (KEY_A, "VALID", "hour", utc(2031, 3, 2, 0)): (1, 1),
            (KEY_B, "VALID", "hour", utc(2031, 3, 2, 0)): (4, 40),
        }
        assert await counts(db, "day") == {
            (KEY_A, "VALID", "day", utc(2031, 3, 1)): (3, 15),
            (KEY_A, "RATE_LIMITED", "day", utc(2031, 3, 1)): (1, 1),
            (KEY_A, "VALID", "day", utc(2031, 3, 2)): (1, 1),
            (KEY_B, "VALID", "day", utc(2031, 3, 2)): (4, 40),
        }
        owners = {(r.key_id, r.owner, r.user_id) for r in await rollups(db)}
        assert owners == {(KEY_A, "acme", USER), (KEY_B, "other", USER)}

        meter.record(KEY_A, USER, "acme", "VALID", 2)
        assert await meter.flush() == 1
        assert await meter.flush() == 0
    hours = await counts(db, "hour")
    days = await counts(db, "day")
    assert hours[(KEY_A, "VALID", "hour", utc(2031, 3, 2, 0))] == (2, 3)
    assert days[(KEY_A, "VALID", "day", utc(2031, 3, 2))] == (2, 3)
    assert await total_count(db, "hour") == await total_count(db, "day") == 10


async def test_concurrent_flushers_add_up_exactly_FI_DB_12(app: FastAPI) -> None:
    """Eight meters (eight workers) flush the same rows at the same moment, three rounds:
    every increment lands, none is lost to a lock (SQLite: BEGIN IMMEDIATE + busy timeout)."""
    db = database(app)
    workers, per_worker, rounds = 8, 250, 3
    failures = 0
    for _ in range(rounds):
        async with AsyncExitStack() as stack:
            meters = [
                await stack.enter_async_context(running_meter(db, settings_of(app)))
                for _ in range(workers)
            ]
            for meter in meters:
                for n in range(per_worker):
                    meter.record(KEY_A if n % 2 else KEY_B, USER, "acme", "VALID", 2)
            results = await asyncio.gather(*(m.flush() for m in meters), return_exceptions=True)
            failures += sum(isinstance(r, BaseException) for r in results)
    expected = workers * per_worker * rounds
    stored_hour = await total_count(db, "hour")
    stored_day = await total_count(db, "day")
    units = sum(units for _, units in (await counts(db, "hour")).values())
    engine = "sqlite" if db.is_sqlite else "postgresql"
    FIGURES.append(
        f"FI-DB-12 {engine}: {workers} concurrent flushers x {rounds} rounds: expected "
        f"{expected}, stored hour {stored_hour} / day {stored_day}, failed flushes {failures}"
    )
    assert failures == 0
    assert stored_hour == stored_day == expected
    assert units == 2 * expected


FAIL_LAST_USED_SQLITE = """
CREATE TRIGGER usage_test_fail BEFORE UPDATE OF last_used_at ON api_keys
BEGIN SELECT RAISE(ABORT, 'injected failure'); END
"""
FAIL_LAST_USED_PG = (
    "CREATE FUNCTION usage_test_fail() RETURNS trigger LANGUAGE plpgsql AS "
    "$$ BEGIN RAISE EXCEPTION 'injected failure'; END $$",
    "CREATE TRIGGER usage_test_fail BEFORE UPDATE OF last_used_at ON api_keys "
    "FOR EACH ROW EXECUTE FUNCTION usage_test_fail()",
)


async def fail_last_used_updates(db: Database, on: bool) -> None:
    """A real database error in the middle of a flush, after the rollup rows were written."""
    async with db.session_scope() as session:
        if db.is_sqlite:
            statements: tuple[str, ...] = (
                (FAIL_LAST_USED_SQLITE,) if on else ("DROP TRIGGER usage_test_fail",)
            )
        else:
            statements = (
                FAIL_LAST_USED_PG
                if on
                else (
                    "DROP TRIGGER usage_test_fail ON api_keys",
                    "DROP FUNCTION usage_test_fail()",
                )
            )
        for statement in statements:
            await session.execute(text(statement))


async def test_a_failed_flush_writes_nothing_and_the_retry_writes_it_once_CHK_AK_05(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """The flush fails after its rollup upserts ran: the unit of work rolls back, the batch goes
    back into the buffer, the background flusher retries on its next tick, and once the
    database accepts again every event is stored exactly once (0 lost, 0 double)."""
    _, _, token = await new_user(client)
    key = await create_key(client, token)
    key_id, user_id = uuid.UUID(key["id"]), uuid.UUID(key["user_id"])
    db = database(app)
    await fail_last_used_updates(db, on=True)
    async with running_meter(db, settings_of(app), usage_flush_seconds=0.05) as meter:
        for _ in range(5):
            meter.record(key_id, user_id, key["owner"], "VALID", 1)
        with pytest.raises(Exception, match="injected failure"):
            await meter.flush()
        assert meter.pending_events == 5
        await asyncio.sleep(0.3)  # several failed ticks of the background flusher
        assert await rollups(db) == []
        assert await last_used(db, key_id) is None
        meter.record(key_id, user_id, key["owner"], "VALID", 1)
        meter.record(key_id, user_id, key["owner"], "USAGE_EXCEEDED", 1)
        assert meter.pending_events == 7

        await fail_last_used_updates(db, on=False)
        await eventually(lambda: nothing_pending(meter))
    by_outcome = {outcome: n for (_, outcome, _, _), (n, _) in (await counts(db, "hour")).items()}
    assert by_outcome == {"VALID": 6, "USAGE_EXCEEDED": 1}
    assert await total_count(db, "day") == 7
    assert await last_used(db, key_id) is not None


async def test_at_the_bucket_cap_known_buckets_still_count_and_new_ones_are_dropped(
    app: FastAPI,
) -> None:
    db = database(app)
    async with running_meter(db, settings_of(app), max_buckets=2) as meter:
        meter.record(KEY_A, USER, "acme", "VALID", 1)
        meter.record(KEY_A, USER, "acme", "RATE_LIMITED", 1)
        meter.record(KEY_B, USER, "acme", "VALID", 1)  # a third bucket: dropped
        meter.record_many(KEY_B, USER, "acme", "DISABLED", 3, 3)  # dropped
        meter.record(KEY_A, USER, "acme", "VALID", 1)  # a known bucket: counted
        assert meter.dropped == 4
        assert meter.pending_events == 3
        assert await meter.flush() == 3
        meter.record(KEY_B, USER, "acme", "VALID", 1)  # room again after the flush
    assert {(k, o): n for (k, o, _, _), (n, _) in (await counts(db, "hour")).items()} == {
        (KEY_A, "VALID"): 2,
        (KEY_A, "RATE_LIMITED"): 1,
        (KEY_B, "VALID"): 1,
    }


async def test_metering_off_counts_nothing(
    make_settings: Callable[..., Settings], migrated_url: str
) -> None:
    async with started_app(make_settings, migrated_url, usage_metering=False) as application:
        meter = application.state.meter
        meter.record(KEY_A, USER, "acme", "VALID", 1)
        meter.record_many(KEY_A, USER, "acme", "VALID", 10, 10)
        assert meter.pending_events == 0
    async with started_app(make_settings, migrated_url) as application:
        assert await rollups(database(application)) == []


async def test_enough_pending_events_flush_before_the_interval(
    make_settings: Callable[..., Settings], migrated_url: str
) -> None:
    """Interval one minute, threshold 10 events: the 10th event wakes the flusher now."""
    async with started_app(
        make_settings, migrated_url, usage_flush_seconds=60, usage_flush_events=10
    ) as application:
        meter = application.state.meter
        db = database(application)
        for _ in range(9):
            meter.record(KEY_A, USER, "acme", "VALID", 1)
        await asyncio.sleep(0.2)
        assert await rollups(db) == []
        meter.record(KEY_A, USER, "acme", "VALID", 1)
        await eventually(lambda: stored_at_least(db, 10), within=20)
        assert await total_count(db, "hour") == 10
        assert meter.pending_events == 0


async def test_shutdown_writes_everything_pending(
    make_settings: Callable[..., Settings], migrated_url: str
) -> None:
    async with started_app(make_settings, migrated_url, usage_flush_seconds=60) as application:
        meter = application.state.meter
        for _ in range(7):
            meter.record(KEY_A, USER, "acme", "VALID", 3)
        assert meter.pending_events == 7
    async with started_app(make_settings, migrated_url) as application:
        assert await counts(database(application), "hour") == {
            (KEY_A, "VALID", "hour", r.bucket_start): (7, 21)
            for r in await rollups(database(application))
            if r.granularity == "hour"
        }
        assert await total_count(database(application), "hour") == 7
        assert await total_count(database(application), "day") == 7


async def test_last_used_at_moves_forward_never_backwards(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    _, _, token = await new_user(client)
    key = await create_key(client, token)
    key_id, user_id = uuid.UUID(key["id"]), uuid.UUID(key["user_id"])
    db = database(app)
    later, earlier = utc(2031, 5, 1, 12), utc(2031, 5, 1, 11)
    async with db.session_scope() as session:
        row = await session.get(ApiKey, key_id)
        assert row is not None
        updated_before = row.updated_at

    async def use_at(moment: datetime) -> None:
        async with running_meter(db, settings_of(app), Clock(moment)) as meter:
            meter.record(key_id, user_id, key["owner"], "VALID", 1)
            await meter.flush()

    await use_at(later)
    assert await last_used(db, key_id) == later
    await use_at(earlier)  # a late flush from another worker
    assert await last_used(db, key_id) == later
    await use_at(later + timedelta(minutes=5))
    assert await last_used(db, key_id) == later + timedelta(minutes=5)
    async with db.session_scope() as session:
        row = await session.get(ApiKey, key_id)
        assert row is not None
        assert row.updated_at == updated_before


async def test_verifications_move_the_keys_last_used_at_forward(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """What a user sees in `GET /api/keys/{id}` after verifications: set by the first flush,
    later by the next one."""
    _, _, token = await new_user(client)
    key = await create_key(client, token)
    shown = f"/api/keys/{key['id']}"
    assert (await client.get(shown, headers=bearer(token))).json()["last_used_at"] is None
    seen = []
    for _ in range(2):
        await asyncio.sleep(0.01)  # two uses at different clock readings
        verified = await client.post("/api/keys/verify", headers={"X-API-Key": key["key"]}, json={})
        assert verified.json()["code"] == "VALID"
        await app.state.meter.flush()
        seen.append((await client.get(shown, headers=bearer(token))).json()["last_used_at"])
    assert seen[0] is not None
    assert datetime.fromisoformat(seen[1]) > datetime.fromisoformat(seen[0])
