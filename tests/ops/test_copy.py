"""`authkeep db copy`: SQLite → PostgreSQL with every value intact, verified by counts and
checksums; idempotent; `--dry-run` writes nothing; a target behind head is refused."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from backup_helpers import body, env_for, invoke, on_database, seed_identity, user_count
from sqlalchemy import delete, select

from authkeep.audit.models import AuditEvent
from authkeep.core.db import Database
from authkeep.ops.snapshot import Snapshot, take_snapshot
from authkeep.sessions.models import Session
from authkeep.users.models import OneTimeToken, User
from support.secrets_scan import FIGURES

USERS = 120  # each with a session, a one-time token and an audit row carrying JSON


@pytest.fixture
async def sqlite_source(sqlite_templates: Any) -> str:
    url: str = await sqlite_templates.fresh()
    return url


@pytest.fixture
async def postgres_target(postgres_templates: Any) -> AsyncIterator[str]:
    url: str = await postgres_templates.fresh()
    yield url
    await postgres_templates.drop(url)


async def _snapshot(database: Database) -> Snapshot:
    async with database.engine.connect() as conn:
        return await conn.run_sync(take_snapshot)


async def _rows(database: Database) -> dict[str, list[Any]]:
    """Every row of the four tables as {column: value}, read through the models, ordered by id."""
    result: dict[str, list[Any]] = {}
    async with database.session_scope() as db:
        for model in (User, Session, OneTimeToken, AuditEvent):
            rows = (await db.scalars(select(model).order_by(model.id))).all()
            columns = [c.key for c in model.__table__.columns]
            result[model.__tablename__] = [
                {key: getattr(row, key) for key in columns} for row in rows
            ]
    return result


def test_copy_sqlite_to_postgres_round_trips_every_value(
    sqlite_source: str, postgres_target: str, tmp_path: Path
) -> None:
    on_database(sqlite_source, lambda database: seed_identity(database, USERS))
    env = env_for(sqlite_source, tmp_path / "data", AUTHKEEP_COPY_TO=postgres_target)

    planned = invoke("db", "copy", "--from", sqlite_source, "--dry-run", "--json", env=env)
    assert planned.exit_code == 0, planned.output
    plan = {item["table"]: item for item in body(planned)["tables"]}
    assert plan["users"]["source_rows"] == USERS
    assert plan["audit_log"]["source_rows"] == USERS
    assert plan["users"]["target_rows"] == 0
    assert body(planned)["verified"] is False
    assert user_count(postgres_target) == 0, "a dry run writes nothing"
    text = invoke("db", "copy", "--from", sqlite_source, "--dry-run", env=env).output
    assert "dry run" in text
    assert "users" in text

    copied = invoke("db", "copy", "--from", sqlite_source, "--batch-size", "50", "--json", env=env)
    assert copied.exit_code == 0, copied.output
    report = body(copied)
    assert report["verified"] is True, report["problems"]
    added = {item["table"]: item["added"] for item in report["tables"]}
    assert added["users"] == added["sessions"] == added["one_time_tokens"] == USERS
    assert added["audit_log"] == USERS
    FIGURES.append(f"db copy sqlite -> postgresql: {4 * USERS} rows in {report['seconds']:.2f} s")

    source_snapshot = on_database(sqlite_source, _snapshot)
    target_snapshot = on_database(postgres_target, _snapshot)
    assert source_snapshot.tables == target_snapshot.tables
    assert on_database(sqlite_source, _rows) == on_database(postgres_target, _rows)
    audit_rows = on_database(postgres_target, _rows)["audit_log"]
    detail = next(row["detail"] for row in audit_rows if row["detail"]["n"] == 3)
    assert detail["nested"] == {"list": [1, "two", 3.5], "text": 'snow ☃ "quoted"'}
    assert detail["ratio"] == 3 / 7
    assert detail["none"] is None
    assert detail["ok"] is False

    again = invoke("db", "copy", "--from", sqlite_source, "--json", env=env)
    assert again.exit_code == 0, again.output
    assert {item["added"] for item in body(again)["tables"]} == {0}
    assert body(again)["verified"] is True
    assert user_count(postgres_target) == USERS


def test_copy_refuses_a_target_behind_head(
    sqlite_source: str, postgres_url: str, tmp_path: Path
) -> None:
    env = env_for(sqlite_source, tmp_path / "data")
    failed = invoke("db", "copy", "--from", sqlite_source, "--to", postgres_url, "--json", env=env)
    assert failed.exit_code == 1
    error = body(failed)
    assert error["error"] == "copy_failed"
    assert "--to" in error["detail"]
    assert "authkeep db migrate" in error["detail"]
    tables = asyncio.run(_table_names(postgres_url))
    assert tables == [], "nothing was created in the target"


async def _table_names(url: str) -> list[str]:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    finally:
        await conn.close()
    return [row["tablename"] for row in rows]


def test_copy_never_overwrites_and_says_where_the_target_differs(
    sqlite_source: str, postgres_target: str, tmp_path: Path
) -> None:
    """The documented choice: rows already in the target are kept (ON CONFLICT DO NOTHING), so
    nothing is duplicated or overwritten; a target whose rows differ fails verification, and one
    whose rows conflict otherwise (same email, another id) is refused with nothing written."""
    on_database(sqlite_source, lambda database: seed_identity(database, 5))
    env = env_for(sqlite_source, tmp_path / "data", AUTHKEEP_COPY_TO=postgres_target)
    assert invoke("db", "copy", "--from", sqlite_source, env=env).exit_code == 0
    on_database(postgres_target, _rename_one_user)

    differs = invoke("db", "copy", "--from", sqlite_source, "--json", env=env)
    assert differs.exit_code == 1
    assert body(differs)["problems"] == ["table users: same row count (5) but different contents"]
    text = invoke("db", "copy", "--from", sqlite_source, env=env).output
    assert "verification failed" in text

    other_target = env_for(sqlite_source, tmp_path / "data", AUTHKEEP_COPY_TO=postgres_target)
    on_database(postgres_target, _empty_users)
    on_database(postgres_target, lambda database: seed_identity(database, 1))
    conflicting = invoke("db", "copy", "--from", sqlite_source, "--json", env=other_target)
    assert conflicting.exit_code == 1
    error = body(conflicting)
    assert error["error"] == "copy_failed"
    assert "The target refused rows of table" in error["detail"]
    assert "Nothing was written" in error["detail"]
    assert user_count(postgres_target) == 1


async def _rename_one_user(database: Database) -> None:
    async with database.session_scope() as db:
        user = (await db.scalars(select(User).limit(1))).one()
        user.name = "renamed in the target"


async def _empty_users(database: Database) -> None:
    async with database.session_scope() as db:
        await db.execute(delete(AuditEvent))
        await db.execute(delete(User))  # sessions and tokens go with them (ON DELETE CASCADE)
