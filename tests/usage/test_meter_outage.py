"""The usage meter across a real PostgreSQL outage (RELIABILITY FI-DB-01, CHK-AK-05): while the
database is stopped every flush fails and its batch goes back into the buffer; once the
database is back the next flush writes everything, and each event is stored exactly once."""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path

import pytest
from usage_helpers import eventually, total_count

from authkeep.config import load_settings
from authkeep.core.db import Database
from authkeep.core.dsn import candidates
from authkeep.usage.meter import UsageMeter
from support.apps import migrate_url
from support.pgcluster import ThrowawayPostgres
from support.secrets_scan import FIGURES, SCAN

KEY = uuid.UUID("00000000-0000-4000-8000-0000000000aa")
USER = uuid.UUID("00000000-0000-4000-8000-0000000000bb")
DOWN_SECONDS = 1.5


async def nothing_pending(meter: UsageMeter) -> bool:
    return meter.pending_events == 0


async def test_counts_survive_a_postgres_outage_and_land_once_FI_DB_01(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pg = ThrowawayPostgres(tmp_path / "pg", password=SCAN.register("meter-outage-Pw@1"))
    await asyncio.to_thread(pg.start)
    try:
        await migrate_url(pg.url())
        settings = load_settings(database_url=pg.url(), usage_flush_seconds=0.1)
        database = Database.open(candidates(settings)[0], settings)
        meter = UsageMeter(settings)
        await meter.start(database)
        try:
            meter.record_many(KEY, USER, "acme", "VALID", 100, 100)
            await eventually(lambda: nothing_pending(meter))
            assert await total_count(database, "hour") == 100

            await asyncio.to_thread(pg.stop)
            caplog.clear()
            for _ in range(5):
                meter.record_many(KEY, USER, "acme", "VALID", 10, 10)
                await asyncio.sleep(DOWN_SECONDS / 5)
            failed = [r for r in caplog.records if "usage flush failed" in r.getMessage()]
            assert failed, "no flush was attempted while the database was down"
            assert meter.pending_events == 50

            await asyncio.to_thread(pg.start)
            await eventually(lambda: nothing_pending(meter))
            hour = await total_count(database, "hour")
            day = await total_count(database, "day")
        finally:
            await meter.stop()
            await database.dispose()
        FIGURES.append(
            f"meter outage postgresql: {len(failed)} failed flushes in {DOWN_SECONDS:.1f} s down, "
            f"150 counted, stored hour {hour} / day {day} (lost {150 - hour}, "
            f"double {max(0, hour - 150)})"
        )
        assert hour == day == 150
        assert all(r.levelno == logging.WARNING for r in failed)
    finally:
        pg.cleanup()
