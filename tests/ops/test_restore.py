"""`authkeep db restore`: destructive only with --yes, refuses another schema head unless
--force (RELIABILITY OPS-06), refuses a SQLite file a server still has open, catches a damaged
backup, and drills into scratch space that is cleaned up afterwards."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from backup_helpers import (  # noqa: F401 (pg_bin is a fixture)
    body,
    env_for,
    invoke,
    on_database,
    pg_bin,
    seed_bulk,
    user_count,
)
from sqlalchemy import Column, MetaData, String, Table, Uuid, insert

from authkeep.core import migrate
from authkeep.core.db import Database
from authkeep.core.models import UTCDateTime, utcnow
from support.server import ServerProcess

# The users table as migration 0001 created it (later revisions add columns).
USERS_AT_0001 = Table(
    "users",
    MetaData(),
    Column("id", Uuid, primary_key=True),
    Column("email", String(320)),
    Column("role", String(20)),
    Column("created_at", UTCDateTime),
    Column("updated_at", UTCDateTime),
)


def _env(url: str, tmp_path: Path, request: pytest.FixtureRequest) -> dict[str, str]:
    extra = (
        {}
        if url.startswith("sqlite")
        else {"AUTHKEEP_PG_BIN": str(request.getfixturevalue("pg_bin"))}
    )
    return env_for(url, tmp_path / "data", **extra)


def _backup(env: dict[str, str], *args: str) -> dict[str, Any]:
    taken = invoke("db", "backup", "--json", *args, env=env)
    assert taken.exit_code == 0, taken.output
    return body(taken)


def test_restore_without_yes_refuses_and_changes_nothing(
    migrated_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    env = _env(migrated_url, tmp_path, request)
    on_database(migrated_url, lambda database: seed_bulk(database, 50))
    backup = _backup(env)
    on_database(migrated_url, lambda database: seed_bulk(database, 10))

    refused = invoke("db", "restore", backup["path"], env=env)
    assert refused.exit_code == 2
    text = " ".join(refused.output.split())
    assert "--yes" in text
    assert "This replaces the authkeep tables in" in text
    assert "users 60" in text
    as_json = body(invoke("db", "restore", backup["path"], "--json", env=env))
    assert as_json["error"] == "confirmation_required"
    assert as_json["current_rows"]["users"] == 60
    assert user_count(migrated_url) == 60

    done = invoke("db", "restore", backup["path"], "--yes", "--json", env=env)
    assert done.exit_code == 0, done.output
    assert body(done)["ok"] is True
    assert user_count(migrated_url) == 50


async def _insert_users_at_0001(database: Database, how_many: int) -> None:
    now = utcnow()
    rows = [
        {
            "id": uuid.uuid4(),
            "email": f"old-{uuid.uuid4().hex}@example.org",
            "role": "user",
            "created_at": now,
            "updated_at": now,
        }
        for _ in range(how_many)
    ]
    async with database.session_scope() as db:
        await db.execute(insert(USERS_AT_0001), rows)


def test_restore_refuses_a_backup_at_another_schema_head_unless_forced(
    migrated_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """OPS-06: a backup taken at revision 0001 is refused by this version (head 0002) until
    --force; after the forced restore `db migrate` brings the schema back to head."""
    env = _env(migrated_url, tmp_path, request)
    on_database(migrated_url, lambda database: migrate.downgrade(database.engine, "0001"))
    on_database(migrated_url, lambda database: _insert_users_at_0001(database, 2))
    backup = _backup(env)
    assert backup["head"] == "0001"
    assert Path(backup["path"]).name.split("-")[-1].startswith("0001.")
    on_database(migrated_url, lambda database: _insert_users_at_0001(database, 1))

    refused = invoke("db", "restore", backup["path"], "--yes", "--json", env=env)
    assert refused.exit_code == 2
    error = body(refused)
    assert error["error"] == "restore_refused"
    assert "0001" in error["detail"]
    assert migrate.head_revision() in error["detail"]
    assert "--force" in error["detail"]
    assert user_count(migrated_url) == 3

    forced = invoke("db", "restore", backup["path"], "--yes", "--force", "--json", env=env)
    assert forced.exit_code == 0, forced.output
    report = body(forced)
    assert report["ok"] is True, report["problems"]
    assert report["head"] == "0001"
    assert user_count(migrated_url) == 2
    assert invoke("db", "migrate", env=env).exit_code == 0
    assert invoke("db", "status", env=env).exit_code == 0


def test_sqlite_restore_refuses_while_the_server_has_the_file_open(
    sqlite_url: str, tmp_path: Path
) -> None:
    env = env_for(sqlite_url, tmp_path / "data")
    assert invoke("db", "migrate", env=env).exit_code == 0
    on_database(sqlite_url, lambda database: seed_bulk(database, 20))
    backup = _backup(env, "--verify")
    on_database(sqlite_url, lambda database: seed_bulk(database, 5))

    server = ServerProcess(tmp_path, env).start()
    try:
        health = httpx.get(f"{server.url}/health/db").json()
        assert isinstance(health["last_verified_backup_age_seconds"], int)
        refused = invoke("db", "restore", backup["path"], "--yes", "--json", env=env)
        assert refused.exit_code == 2
        assert body(refused)["error"] == "restore_refused"
        assert "stop `authkeep serve`" in body(refused)["detail"]
    finally:
        server.stop()
        server.output()
    assert user_count(sqlite_url) == 25

    done = invoke("db", "restore", backup["path"], "--yes", "--json", env=env)
    assert done.exit_code == 0, done.output
    assert user_count(sqlite_url) == 20


def test_a_damaged_backup_is_caught_before_it_is_trusted(sqlite_url: str, tmp_path: Path) -> None:
    env = env_for(sqlite_url, tmp_path / "data")
    assert invoke("db", "migrate", env=env).exit_code == 0
    on_database(sqlite_url, lambda database: seed_bulk(database, 20))
    path = Path(_backup(env)["path"])
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    for args in (("--drill",), ("--yes",)):
        failed = invoke("db", "restore", str(path), *args, "--json", env=env)
        assert failed.exit_code == 1
        assert "does not match the checksum recorded" in body(failed)["detail"]
    assert user_count(sqlite_url) == 20


async def _drill_databases(admin_url: str) -> list[str]:
    conn = await asyncpg.connect(admin_url)
    try:
        rows = await conn.fetch(
            "SELECT datname FROM pg_database WHERE datname LIKE 'authkeep_drill_%'"
        )
    finally:
        await conn.close()
    return [row["datname"] for row in rows]


def test_drill_records_verified_at_and_leaves_nothing_behind(
    migrated_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    env = _env(migrated_url, tmp_path, request)
    on_database(migrated_url, lambda database: seed_bulk(database, 30))
    backup = _backup(env)
    assert backup["verified_at"] is None
    before = (
        None if migrated_url.startswith("sqlite") else asyncio.run(_drill_databases(migrated_url))
    )

    drilled = invoke("db", "restore", backup["path"], "--drill", "--json", env=env)
    assert drilled.exit_code == 0, drilled.output
    report = body(drilled)
    assert report["ok"] is True
    assert report["tables"] == backup["tables"]
    listed = (Path(backup["path"]).parent / "manifest.json").read_text()
    assert '"verified_at": null' not in listed
    assert user_count(migrated_url) == 30
    backups = Path(backup["path"]).parent
    assert sorted(p.name for p in backups.iterdir()) == sorted(
        [Path(backup["path"]).name, "manifest.json", ".manifest.lock"]
    )
    if before is not None:
        assert asyncio.run(_drill_databases(migrated_url)) == before
        assert "dropped" in report["target"]
