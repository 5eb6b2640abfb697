"""Migrations on both engines (RELIABILITY OPS-03): round trip, no drift, idempotent, gated."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from authkeep.app import open_database
from authkeep.config import Settings
from authkeep.core import migrate
from authkeep.core.db import Database
from authkeep.core.dsn import candidates
from authkeep.errors import SchemaBehind
from authkeep.models import Base


@pytest.fixture
async def database(database_url: str, make_settings) -> AsyncIterator[Database]:
    settings: Settings = make_settings(database_url=database_url)
    db = Database.open(candidates(settings)[0], settings)
    yield db
    await db.dispose()


def _tables(conn: Connection) -> set[str]:
    return set(inspect(conn).get_table_names())


def _drift(conn: Connection) -> list[object]:
    return list(compare_metadata(MigrationContext.configure(conn), Base.metadata))


async def test_upgrade_downgrade_upgrade_round_trip(database: Database):
    first = await migrate.upgrade(database.engine)
    assert first.changed
    assert first.after == migrate.head_revision()
    async with database.engine.connect() as conn:
        assert migrate.expected_tables() <= await conn.run_sync(_tables)

    down = await migrate.downgrade(database.engine, "base")
    assert down.after is None
    async with database.engine.connect() as conn:
        assert await conn.run_sync(_tables) <= {migrate.VERSION_TABLE}

    again = await migrate.upgrade(database.engine)
    assert again.changed
    assert again.after == migrate.head_revision()


async def test_models_and_migrations_do_not_drift(database: Database):
    await migrate.upgrade(database.engine)
    async with database.engine.connect() as conn:
        assert await conn.run_sync(_drift) == []


async def test_second_upgrade_reports_nothing_to_do(database: Database):
    await migrate.upgrade(database.engine)
    report = await migrate.upgrade(database.engine)
    assert report.changed is False
    assert report.before == report.after == report.head


async def test_postgres_node_refuses_a_schema_behind_head(postgres_url: str, make_settings):
    settings = make_settings(database_url=postgres_url)
    with pytest.raises(SchemaBehind, match="Run `authkeep db migrate`"):
        await open_database(settings)


async def test_node_refuses_a_schema_from_a_newer_release(
    database: Database, make_settings, database_url: str
):
    await migrate.upgrade(database.engine)
    async with database.engine.begin() as conn:
        await conn.execute(text("UPDATE alembic_version SET version_num = 'ffff_future'"))
    state = await migrate.schema_state(database.engine)
    assert state.known is False
    with pytest.raises(SchemaBehind, match="newer release"):
        await migrate.require_head(database.engine)


async def test_standalone_sqlite_migrates_itself_on_start(sqlite_url: str, make_settings):
    database = await open_database(make_settings(database_url=sqlite_url))
    try:
        state = await migrate.schema_state(database.engine)
        assert state.at_head
    finally:
        await database.dispose()
