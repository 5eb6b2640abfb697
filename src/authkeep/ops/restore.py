"""Restore drills and restores: put a backup back, then prove it matches its manifest entry.

A drill restores into scratch space — a fresh `authkeep_drill_<random>` database on the admin
DSN's server (dropped afterwards), or a decompressed temporary file for SQLite — and compares
row counts, checksums and the migration head with the snapshot recorded at backup time, plus
SQLite's `PRAGMA integrity_check`. A passing drill stamps `verified_at` in the manifest.

A restore replaces the configured database: `pg_restore --clean --if-exists --no-owner
--single-transaction` (all or nothing), or for SQLite the backup API from the decompressed file
into the database file, only when no other connection has it open. The same checks run after.
"""

from __future__ import annotations

import asyncio
import gzip
import secrets
import shutil
import sqlite3
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from authkeep.config import Settings
from authkeep.core.bootstrap import select_admin_database
from authkeep.core.db import Database
from authkeep.core.dsn import Candidate
from authkeep.core.migrate import head_revision
from authkeep.errors import AuthkeepError
from authkeep.ops import manifest
from authkeep.ops.manifest import BACKUP_NAME, BackupError, BackupRecord
from authkeep.ops.pgtools import PgTool, find_tool, libpq_env, require_compatible, run_tool
from authkeep.ops.snapshot import (
    Progress,
    Snapshot,
    count_rows,
    differences,
    inspect_sqlite_file,
    take_snapshot,
)


class RestoreRefused(AuthkeepError):
    """The restore would be unsafe as asked (wrong head, file in use, wrong engine): exit 2."""

    code = "restore_refused"


@dataclass
class VerifyReport:
    """What a drill or a restore checked, and every difference it found."""

    file: str
    engine: str
    target: str
    expected: Snapshot | None
    actual: Snapshot
    integrity: str
    seconds: float
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "file": self.file,
            "engine": self.engine,
            "target": self.target,
            "head": self.actual.head,
            "integrity": self.integrity,
            "tables": self.actual.as_dict()["tables"],
            "compared_with_manifest": self.expected is not None,
            "seconds": round(self.seconds, 3),
            "problems": self.problems,
        }


@dataclass
class RestorePlan:
    """What `restore` would replace, shown before anything is touched."""

    file: Path
    engine: str
    head: str | None
    record: BackupRecord | None
    candidate: Candidate
    current_rows: dict[str, int]

    def describe(self) -> str:
        rows = ", ".join(f"{name} {count}" for name, count in self.current_rows.items())
        taken = self.record.created_at.isoformat() if self.record else "unknown time"
        return (
            f"This replaces the authkeep tables in {self.candidate.display} "
            f"({rows or 'no authkeep tables yet'}) with {self.file.name} "
            f"(taken {taken}, schema {self.head})."
        )


async def no_timeouts(conn: AsyncConnection) -> None:
    """Operations read whole tables: lift the app's statement and idle timeouts (PostgreSQL)."""
    if conn.dialect.name == "postgresql":
        await conn.execute(text("SET LOCAL statement_timeout = 0"))
        await conn.execute(text("SET LOCAL idle_in_transaction_session_timeout = 0"))


def _engine_of(path: Path) -> str:
    if path.name.endswith(".sqlite.gz"):
        return "sqlite"
    if path.name.endswith(".dump"):
        return "postgresql"
    raise BackupError(f"{path.name} is not an authkeep backup (.dump or .sqlite.gz).")


def _record_for(path: Path) -> BackupRecord | None:
    """The manifest entry beside the file, after checking the file is the one it describes."""
    if not path.is_file():
        raise BackupError(f"{path} does not exist.")
    record = manifest.find(path.parent, path.name)
    if record is not None and record.sha256 and manifest.file_sha256(path) != record.sha256:
        raise BackupError(
            f"{path.name} does not match the checksum recorded in the manifest: the file changed "
            "or is damaged since the backup was taken."
        )
    return record


async def drill(
    settings: Settings, path: Path, *, pg_bin: Path | None = None, progress: Progress | None = None
) -> VerifyReport:
    """Restore `path` into scratch space and compare it with its manifest entry (module doc)."""
    started = time.perf_counter()
    record = _record_for(path)
    if record is None:
        raise BackupError(
            f"{path.name} has no entry in {path.parent / manifest.MANIFEST_NAME}: a drill compares "
            "the restored data with the snapshot recorded there."
        )
    if _engine_of(path) == "sqlite":
        actual, integrity, target = await _drill_sqlite(path, progress)
    else:
        actual, integrity, target = await _drill_postgres(settings, path, pg_bin, progress)
    report = _report(path, record, actual, integrity, target, started)
    if report.ok:
        manifest.mark_verified(path.parent, path.name, datetime.now(UTC))
    return report


def _report(
    path: Path,
    record: BackupRecord | None,
    actual: Snapshot,
    integrity: str,
    target: str,
    started: float,
    head: str | None = None,
) -> VerifyReport:
    """Compare with the manifest entry; without one, at least integrity and the head."""
    problems: list[str] = []
    if integrity != "ok":
        problems.append(f"integrity check: {integrity[:300]}")
    expected = record.snapshot if record is not None else None
    if expected is not None:
        problems += differences(expected, actual)
    elif actual.head is None or actual.head != head:
        problems.append(f"migration head is {actual.head or 'missing'}, expected {head}")
    seconds = time.perf_counter() - started
    engine = _engine_of(path)
    return VerifyReport(path.name, engine, target, expected, actual, integrity, seconds, problems)


def _decompress(path: Path, destination: Path) -> None:
    try:
        with gzip.open(path, "rb") as packed, destination.open("wb") as out:
            shutil.copyfileobj(packed, out, length=1 << 20)
    except (OSError, EOFError) as exc:
        raise BackupError(f"{path.name} cannot be decompressed ({exc!s}).") from None


async def _drill_sqlite(path: Path, progress: Progress | None) -> tuple[Snapshot, str, str]:
    scratch = path.parent / f".drill-{secrets.token_hex(6)}.sqlite"
    try:
        if progress is not None:
            progress("decompressing", 0, None)
        await asyncio.to_thread(_decompress, path, scratch)
        snapshot, integrity = await asyncio.to_thread(inspect_sqlite_file, str(scratch), progress)
    finally:
        scratch.unlink(missing_ok=True)
    return snapshot, integrity, "temporary SQLite file"


async def _pg_tool(conn: AsyncConnection, name: str, pg_bin: Path | None) -> PgTool:
    tool = find_tool(name, pg_bin)
    require_compatible(tool, int(await conn.scalar(text("SHOW server_version_num"))))
    return tool


async def pg_snapshot(
    settings: Settings, candidate: Candidate, progress: Progress | None
) -> Snapshot:
    """Counts, checksums and head of a PostgreSQL database, in one REPEATABLE READ transaction;
    reading every table is also the "all tables readable" check."""
    database = Database.open(candidate, settings)
    try:
        async with database.engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="REPEATABLE READ")
            async with conn.begin():
                await no_timeouts(conn)
                return await conn.run_sync(take_snapshot, progress)
    finally:
        await database.dispose()


async def _drill_postgres(
    settings: Settings, path: Path, pg_bin: Path | None, progress: Progress | None
) -> tuple[Snapshot, str, str]:
    admin = (await select_admin_database(settings)).candidate
    if admin.is_sqlite:
        raise RestoreRefused(
            "A PostgreSQL backup is drilled on a PostgreSQL server: set DATABASE_URL_ADMIN (or "
            "DATABASE_URL) to one where authkeep may create a scratch database."
        )
    name = f"authkeep_drill_{secrets.token_hex(6)}"
    database = Database.open(admin, settings)
    try:
        async with database.engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            pg_restore = await _pg_tool(conn, "pg_restore", pg_bin)
            try:
                await conn.execute(text(f'CREATE DATABASE "{name}"'))
            except DBAPIError:
                raise BackupError(
                    f"The drill could not create its scratch database on {admin.display}: the "
                    "user needs CREATEDB. Set DATABASE_URL_ADMIN to a role that may create "
                    "databases (the one that runs migrations)."
                ) from None
        scratch = Candidate("drill", admin.url.set(database=name))
        try:
            if progress is not None:
                progress("pg_restore into a scratch database", 0, None)
            args = ["--no-owner", "--no-privileges", "--exit-on-error", "--no-password"]
            await run_tool(
                pg_restore,
                [*args, f"--dbname={name}", str(path)],
                libpq_env(scratch.url, "authkeep-drill"),
            )
            snapshot = await pg_snapshot(settings, scratch, progress)
        finally:
            async with database.engine.connect() as conn:
                conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
                await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        await database.dispose()
    return snapshot, "ok", f"scratch database {name} (dropped)"


async def plan_restore(settings: Settings, path: Path, *, force: bool = False) -> RestorePlan:
    """Check that `path` may be restored into the configured database and say what it replaces.

    Refuses (RestoreRefused) a backup whose schema head is not this version's head unless
    `force`, and a backup of the other engine.
    """
    record = _record_for(path)
    engine = _engine_of(path)
    match = BACKUP_NAME.match(path.name)
    head = record.head if record else (match.group("head") if match else None)
    if head != head_revision() and not force:
        raise RestoreRefused(
            f"{path.name} was taken at schema {head}, this authkeep version is at "
            f"{head_revision()}: restoring it would leave the schema and the code disagreeing. "
            "Restore with the authkeep release that took it, or pass --force and then run "
            "`authkeep db migrate`."
        )
    candidate = (await select_admin_database(settings)).candidate
    if (engine == "sqlite") != candidate.is_sqlite:
        raise RestoreRefused(
            f"{path.name} is a {engine} backup but the configured database is "
            f"{candidate.display}. To move data from SQLite to PostgreSQL use `authkeep db copy`."
        )
    return RestorePlan(
        path, engine, head, record, candidate, await _current_rows(settings, candidate)
    )


async def _current_rows(settings: Settings, candidate: Candidate) -> dict[str, int]:
    database = Database.open(candidate, settings)
    try:
        async with database.engine.connect() as conn:
            return await conn.run_sync(count_rows)
    finally:
        await database.dispose()


async def restore(
    settings: Settings,
    plan: RestorePlan,
    *,
    pg_bin: Path | None = None,
    progress: Progress | None = None,
) -> VerifyReport:
    """Replace the database in `plan` with the backup, then check it against the manifest."""
    started = time.perf_counter()
    if plan.engine == "sqlite":
        actual, integrity = await _restore_sqlite(plan, progress)
    else:
        actual, integrity = await _restore_postgres(settings, plan, pg_bin, progress)
    return _report(
        plan.file, plan.record, actual, integrity, plan.candidate.display, started, plan.head
    )


async def _restore_sqlite(plan: RestorePlan, progress: Progress | None) -> tuple[Snapshot, str]:
    target = Path(plan.candidate.url.database or "")
    unpacked = target.parent / f".restore-{secrets.token_hex(6)}.sqlite"
    try:
        if progress is not None:
            progress("decompressing", 0, None)
        await asyncio.to_thread(_decompress, plan.file, unpacked)
        if progress is not None:
            progress("replacing the database (backup API)", 0, None)
        await asyncio.to_thread(replace_sqlite, unpacked, target)
    finally:
        unpacked.unlink(missing_ok=True)
    return await asyncio.to_thread(inspect_sqlite_file, str(target), progress)


def replace_sqlite(source: Path, target: Path) -> None:
    """Copy `source` over `target` with the backup API, refusing while anyone has `target` open.

    Leaving WAL mode needs the only connection to the file, so `journal_mode=DELETE` failing
    with "database is locked" means a server (or another tool) still uses it. The exclusive
    locking mode then keeps everyone out until the copy is complete.
    """
    destination = sqlite3.connect(target, timeout=1, isolation_level=None)
    try:
        destination.execute("PRAGMA locking_mode=EXCLUSIVE")
        try:
            destination.execute("PRAGMA journal_mode=DELETE").fetchall()
            destination.execute("BEGIN EXCLUSIVE")
            destination.execute("COMMIT")
        except sqlite3.OperationalError:
            raise RestoreRefused(
                f"{target} is in use: stop `authkeep serve` (and anything else using the file), "
                "then run the restore again. Nothing was changed."
            ) from None
        origin = sqlite3.connect(source)
        try:
            origin.backup(destination)
        finally:
            origin.close()
    finally:
        destination.close()


async def _restore_postgres(
    settings: Settings, plan: RestorePlan, pg_bin: Path | None, progress: Progress | None
) -> tuple[Snapshot, str]:
    database = Database.open(plan.candidate, settings)
    try:
        async with database.engine.connect() as conn:
            pg_restore = await _pg_tool(conn, "pg_restore", pg_bin)
    finally:
        await database.dispose()
    if progress is not None:
        progress("pg_restore (one transaction)", 0, None)
    args = ["--clean", "--if-exists", "--no-owner", "--single-transaction", "--no-password"]
    url = plan.candidate.url
    await run_tool(
        pg_restore,
        [*args, f"--dbname={url.database}", str(plan.file)],
        libpq_env(url, "authkeep-restore"),
    )
    return await pg_snapshot(settings, plan.candidate, progress), "ok"
