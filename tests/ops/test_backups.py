"""`authkeep db backup`: backups under write load, the SQLite backup API, retention, the tools'
install hint and version check, and the age of the last verified backup (RELIABILITY FI-DB-11,
OPS-06)."""

from __future__ import annotations

import asyncio
import gzip
import json
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from backup_helpers import (  # noqa: F401 (pg_bin is a fixture)
    Writer,
    body,
    env_for,
    invoke,
    on_database,
    pg_bin,
    seed_bulk,
    user_count,
)
from sqlalchemy import create_engine, event, insert

from authkeep.config import load_settings
from authkeep.core.migrate import head_revision
from authkeep.core.models import utcnow
from authkeep.ops.backups import latest_verified_backup
from authkeep.users.models import User
from support.secrets_scan import FIGURES

SEED_USERS = 5_000


def _engine_of(url: str) -> str:
    return "sqlite" if url.startswith("sqlite") else "postgresql"


def _tools_env(url: str, request: pytest.FixtureRequest) -> dict[str, str]:
    if url.startswith("sqlite"):
        return {}
    return {"AUTHKEEP_PG_BIN": str(request.getfixturevalue("pg_bin"))}


def test_backup_under_write_load_restores_to_its_snapshot(
    migrated_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """FI-DB-11 / OPS-06: a backup taken while users are being inserted is a consistent
    snapshot: the drill and the restore both reproduce its per-table checksums exactly."""
    engine = _engine_of(migrated_url)
    env = env_for(migrated_url, tmp_path / "data", **_tools_env(migrated_url, request))
    on_database(migrated_url, lambda database: seed_bulk(database, SEED_USERS))
    before = user_count(migrated_url)

    with Writer(migrated_url) as load:
        written_before, started = load.written, time.perf_counter()
        taken = invoke("db", "backup", "--verify", "--json", env=env)
        backup_seconds = time.perf_counter() - started
        written_during = load.written - written_before
        time.sleep(0.3)  # the load goes on after the snapshot
    assert not load.errors, load.errors
    assert taken.exit_code == 0, taken.output
    result = body(taken)
    snapshot_users = result["tables"]["users"]["rows"]
    after = user_count(migrated_url)
    assert written_during > 0
    assert before <= snapshot_users < after, "the backup is one moment inside the write load"
    assert result["engine"] == engine
    assert result["head"] == head_revision()
    assert result["drill"]["ok"] is True, result["drill"]["problems"]
    assert result["drill"]["tables"] == result["tables"]
    assert result["verified_at"] is not None

    started = time.perf_counter()
    restored = invoke("db", "restore", result["path"], "--yes", "--json", env=env)
    restore_seconds = time.perf_counter() - started
    assert restored.exit_code == 0, restored.output
    report = body(restored)
    assert report["ok"] is True, report["problems"]
    assert report["compared_with_manifest"] is True
    assert report["tables"] == result["tables"]
    assert report["head"] == head_revision()
    assert report["integrity"] == "ok"
    assert user_count(migrated_url) == snapshot_users
    rows = sum(t["rows"] for t in result["tables"].values())
    FIGURES.append(
        f"FI-DB-11 {engine}: backup of {rows} rows under write load (+ drill) "
        f"{backup_seconds:.2f} s, {result['size_bytes']} bytes; restore (RTO) "
        f"{restore_seconds:.2f} s; drill alone {result['drill']['seconds']:.2f} s"
    )


def test_sqlite_backup_uses_the_backup_api_and_includes_the_wal(
    sqlite_templates: Any, tmp_path: Path
) -> None:
    """FI-DB-11: commits still sitting in the -wal file of a live database are in the backup,
    where a copy of the main database file would miss them."""
    url = asyncio.run(sqlite_templates.fresh())
    path = Path(url.removeprefix("sqlite:///"))
    live = create_engine(f"sqlite:///{path}")

    @event.listens_for(live, "connect")
    def wal_without_checkpoints(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute("PRAGMA journal_mode=WAL")
        dbapi_connection.execute("PRAGMA wal_autocheckpoint=0")

    now = utcnow()
    with live.begin() as conn:  # the pool keeps this connection open: the database stays live
        conn.execute(
            insert(User),
            [
                {"email": f"wal{i}@example.com", "created_at": now, "updated_at": now}
                for i in range(300)
            ],
        )
    wal = path.with_name(path.name + "-wal")
    assert wal.stat().st_size > 0, "the writes are in the WAL, not yet in the main file"
    file_copy = tmp_path / "file-copy.db"
    shutil.copyfile(path, file_copy)
    with sqlite3.connect(file_copy) as copied:
        assert copied.execute("SELECT count(*) FROM users").fetchone()[0] == 0

    env = env_for(url, tmp_path / "data")
    try:
        taken = invoke("db", "backup", "--verify", "--json", env=env)
        assert taken.exit_code == 0, taken.output
        assert wal.stat().st_size > 0, "the live database was not checkpointed by the backup"
    finally:
        live.dispose()
    result = body(taken)
    assert result["tables"]["users"]["rows"] == 300
    assert result["drill"]["ok"] is True
    unpacked = tmp_path / "unpacked.db"
    unpacked.write_bytes(gzip.decompress(Path(result["path"]).read_bytes()))
    with sqlite3.connect(unpacked) as restored:
        assert restored.execute("SELECT count(*) FROM users").fetchone()[0] == 300
        assert restored.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert not unpacked.with_name("unpacked.db-wal").exists()


def test_retention_keeps_exactly_the_newest_n(sqlite_url: str, tmp_path: Path) -> None:
    backups = tmp_path / "elsewhere"
    env = env_for(sqlite_url, tmp_path / "data")
    assert invoke("db", "migrate", env=env).exit_code == 0
    names = []
    for _ in range(4):
        taken = invoke("db", "backup", "--dir", str(backups), "--keep", "2", "--json", env=env)
        assert taken.exit_code == 0, taken.output
        names.append(Path(body(taken)["path"]).name)
    assert len(set(names)) == 4, "every backup has its own timestamped name"
    assert sorted(p.name for p in backups.glob("authkeep-*")) == sorted(names[-2:])
    listed = json.loads((backups / "manifest.json").read_text())["backups"]
    assert [entry["file"] for entry in listed] == names[-2:]
    assert body(taken)["removed"] == [names[1]]


def test_missing_pg_dump_fails_with_the_install_hint(postgres_url: str, tmp_path: Path) -> None:
    env = env_for(postgres_url, tmp_path / "data")
    assert invoke("db", "migrate", env=env).exit_code == 0
    for args in (("--json",), ()):
        failed = invoke("db", "backup", "--pg-bin", "/nonexistent", *args, env=env)
        assert failed.exit_code == 1
        assert "apt-get install postgresql-client" in failed.output.replace("\n", " ")
    assert (
        body(invoke("db", "backup", "--pg-bin", "/nonexistent", "--json", env=env))["error"]
        == "pg_tools_missing"
    )
    assert not list((tmp_path / "data" / "backups").glob("authkeep-*"))


def test_client_older_than_the_server_is_named_before_dumping(
    postgres_url: str, tmp_path: Path
) -> None:
    """An old pg_dump (here an executable that reports 9.6 and records any other call) is
    refused with the version to install; it is never asked to dump."""
    old = tmp_path / "old-bin"
    old.mkdir()
    called = tmp_path / "called"
    script = old / "pg_dump"
    script.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = "--version" ]; then echo "pg_dump (PostgreSQL) 9.6.24"; exit 0; fi\n'
        f'echo "$@" > {called}\nexit 0\n'
    )
    script.chmod(0o755)
    env = env_for(postgres_url, tmp_path / "data")
    assert invoke("db", "migrate", env=env).exit_code == 0
    failed = invoke("db", "backup", "--json", env={**env, "AUTHKEEP_PG_BIN": str(old)})
    assert failed.exit_code == 1
    error = body(failed)
    assert error["error"] == "pg_version_mismatch"
    assert "9.6.24" in error["detail"]
    assert "postgresql-client-" in error["detail"]
    assert not called.exists()


async def test_health_db_reports_the_age_of_the_last_verified_backup(
    client: httpx.AsyncClient, migrated_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    env = env_for(migrated_url, tmp_path / "data", **_tools_env(migrated_url, request))
    settings = load_settings(data_dir=tmp_path / "data")
    assert latest_verified_backup(settings) is None
    assert (await client.get("/health/db")).json()["last_verified_backup_age_seconds"] is None

    unverified = await asyncio.to_thread(invoke, "db", "backup", "--json", env=env)
    assert unverified.exit_code == 0, unverified.output
    assert latest_verified_backup(settings) is None

    verified = await asyncio.to_thread(invoke, "db", "backup", "--verify", "--json", env=env)
    assert verified.exit_code == 0, verified.output
    record = latest_verified_backup(settings)
    assert record is not None
    assert record.file == Path(body(verified)["path"]).name
    assert record.verified_at is not None
    response = await client.get("/health/db")
    assert response.status_code == 200
    age = response.json()["last_verified_backup_age_seconds"]
    assert isinstance(age, int)
    assert 0 <= age < 120
    assert (await client.get("/api/health/db")).json()["last_verified_backup_age_seconds"] == age

    (tmp_path / "data" / "backups" / record.file).unlink()
    assert latest_verified_backup(settings) is None
