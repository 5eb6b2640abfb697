"""`authkeep db backup`: timestamped, compressed backups with a manifest you can check them against.

PostgreSQL: `pg_dump --format=custom` (compressed) run against the admin DSN. The per-table
counts and checksums are computed in the very snapshot pg_dump dumps: a REPEATABLE READ
transaction exports its snapshot (`pg_export_snapshot()`), pg_dump imports it (`--snapshot`),
and the checksums are read in the exporting transaction while pg_dump runs.

SQLite: the online backup API (`sqlite3.Connection.backup`, one step, so one read transaction:
a consistent copy that includes commits still in the `-wal` file, which a file copy would miss),
then the counts and checksums are read from that copy and it is gzipped.

Each backup is written under a temporary name, fsynced and linked into place (never over an
existing file), then recorded in `manifest.json`; retention runs last.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
import secrets
import shutil
import sqlite3
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import text

from authkeep.config import Settings
from authkeep.core.bootstrap import select_admin_database
from authkeep.core.db import Database
from authkeep.core.dsn import Candidate
from authkeep.ops import manifest, restore
from authkeep.ops.manifest import STAMP_FORMAT, BackupError, BackupRecord
from authkeep.ops.pgtools import find_tool, libpq_env, require_compatible, run_tool
from authkeep.ops.snapshot import Progress, Snapshot, inspect_sqlite_file, take_snapshot

_GZIP_LEVEL = 6


@dataclass
class BackupResult:
    """What `create_backup` wrote, removed and (with `verify`) proved."""

    record: BackupRecord
    path: Path
    seconds: float
    removed: list[str]
    drill: restore.VerifyReport | None = None

    @property
    def ok(self) -> bool:
        return self.drill is None or self.drill.ok

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "path": str(self.path),
            **self.record.as_dict(),
            "seconds": round(self.seconds, 3),
            "removed": self.removed,
            "drill": self.drill.as_dict() if self.drill else None,
        }


def backup_directory(settings: Settings, override: Path | None = None) -> Path:
    """`--dir`, else AUTHKEEP_BACKUP_DIR, else `<data_dir>/backups`."""
    return override or settings.backup_dir or settings.data_dir / "backups"


async def create_backup(
    settings: Settings,
    *,
    directory: Path | None = None,
    keep: int | None = None,
    pg_bin: Path | None = None,
    verify: bool = False,
    progress: Progress | None = None,
) -> BackupResult:
    """Back up the admin DSN's database into the backup directory (see module doc)."""
    started = time.perf_counter()
    target_dir = backup_directory(settings, directory).resolve()
    target_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    selection = await select_admin_database(settings)
    candidate = selection.candidate
    engine = "sqlite" if candidate.is_sqlite else "postgresql"
    created_at = _free_stamp(target_dir, engine)
    partial = target_dir / f".partial-{secrets.token_hex(6)}"
    try:
        if candidate.is_sqlite:
            snapshot = await _backup_sqlite(candidate, partial, progress)
        else:
            snapshot = await _backup_postgres(settings, candidate, partial, pg_bin, progress)
        if snapshot.head is None:
            raise BackupError(
                f"{candidate.display} has no authkeep schema: nothing to back up. "
                "Run `authkeep db migrate` first."
            )
        final = target_dir / manifest.backup_name(engine, created_at, snapshot.head)
        _place(partial, final)
    finally:
        partial.unlink(missing_ok=True)
    record = BackupRecord(
        file=final.name,
        engine=engine,
        created_at=created_at,
        head=snapshot.head,
        size_bytes=final.stat().st_size,
        sha256=manifest.file_sha256(final),
        source=candidate.display,
        tables=snapshot.tables,
    )
    manifest.add(target_dir, record)
    drill = (
        await restore.drill(settings, final, pg_bin=pg_bin, progress=progress) if verify else None
    )
    removed = manifest.apply_retention(target_dir, keep or settings.backup_keep)
    record = manifest.find(target_dir, final.name) or record
    return BackupResult(record, final, time.perf_counter() - started, removed, drill)


def _free_stamp(directory: Path, engine: str) -> datetime:
    """This second, or the next one if a backup of this engine already carries this second's
    stamp: names stay `authkeep-<engine>-<stamp>-<head>` and never collide."""
    while True:
        now = datetime.now(UTC).replace(microsecond=0)
        if not any(directory.glob(f"authkeep-{engine}-{now.strftime(STAMP_FORMAT)}-*")):
            return now
        time.sleep(1.01 - datetime.now(UTC).microsecond / 1_000_000)


def _place(partial: Path, final: Path) -> None:
    """Make the finished file durable, then give it its name without replacing anything."""
    with partial.open("rb") as handle:
        os.fsync(handle.fileno())
    partial.chmod(0o600)
    try:
        os.link(partial, final)
    except FileExistsError:
        raise BackupError(f"{final.name} already exists; nothing was overwritten.") from None
    manifest.fsync_directory(final.parent)


async def _backup_sqlite(
    candidate: Candidate, partial: Path, progress: Progress | None
) -> Snapshot:
    source = Path(candidate.url.database or "")
    copy = partial.with_name(partial.name + ".sqlite")
    try:
        if progress is not None:
            progress("SQLite online backup", 0, None)
        await asyncio.to_thread(online_backup, source, copy)
        snapshot, integrity = await asyncio.to_thread(inspect_sqlite_file, str(copy), progress)
        if integrity != "ok":
            raise BackupError(f"The backup copy failed PRAGMA integrity_check: {integrity[:300]}")
        if progress is not None:
            progress("compressing", 0, None)
        await asyncio.to_thread(_gzip, copy, partial)
    finally:
        copy.unlink(missing_ok=True)
    return snapshot


def online_backup(source: Path, destination: Path) -> None:
    """Copy a live SQLite database with the backup API, in one step (one consistent read).

    Stepping page by page would let every concurrent write restart the copy; one step holds a
    single read transaction, which in WAL mode does not block the writers.
    """
    if not source.is_file():
        raise BackupError(f"There is no SQLite database at {source}.")
    src = sqlite3.connect(source, timeout=30)
    try:
        dst = sqlite3.connect(destination)
        try:
            src.backup(dst)
            # A self-contained file: no -wal beside it, whatever mode the source was in.
            dst.execute("PRAGMA journal_mode=DELETE")
        finally:
            dst.close()
    finally:
        src.close()


def _gzip(source: Path, destination: Path) -> None:
    with source.open("rb") as raw, gzip.open(destination, "wb", compresslevel=_GZIP_LEVEL) as out:
        shutil.copyfileobj(raw, out, length=1 << 20)


async def _backup_postgres(
    settings: Settings,
    candidate: Candidate,
    partial: Path,
    pg_bin: Path | None,
    progress: Progress | None,
) -> Snapshot:
    pg_dump = find_tool("pg_dump", pg_bin)
    database = Database.open(candidate, settings)
    try:
        async with database.engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="REPEATABLE READ")
            async with conn.begin():
                await restore.no_timeouts(conn)
                require_compatible(pg_dump, int(await conn.scalar(text("SHOW server_version_num"))))
                snapshot_id = str(await conn.scalar(text("SELECT pg_export_snapshot()")))
                args = [
                    "--format=custom",
                    f"--snapshot={snapshot_id}",
                    "--no-password",
                    f"--file={partial}",
                    f"--dbname={candidate.url.database}",
                ]
                env = libpq_env(candidate.url, "authkeep-backup")
                if progress is not None:
                    progress("pg_dump", 0, None)
                dump = asyncio.create_task(run_tool(pg_dump, args, env))
                try:
                    snapshot = await conn.run_sync(take_snapshot, progress)
                except BaseException:
                    dump.cancel()
                    with contextlib.suppress(BaseException):
                        await dump
                    raise
                # The exporting transaction stays open until pg_dump is done with the snapshot.
                await dump
    finally:
        await database.dispose()
    return snapshot


def latest_verified_backup(settings: Settings) -> BackupRecord | None:
    """The newest backup a drill has verified whose file is still there; no database access.

    A missing or unreadable manifest counts as "no verified backup".
    """
    directory = backup_directory(settings)
    try:
        records = manifest.load(directory)
    except BackupError:
        return None
    verified = [r for r in records if r.verified_at is not None and (directory / r.file).is_file()]
    return max(verified, key=lambda r: r.created_at, default=None)


def verified_backup_age_seconds(settings: Settings) -> int | None:
    """Age of the data in the newest verified backup (what `/health/db` reports), or None."""
    record = latest_verified_backup(settings)
    return record.age_seconds() if record is not None else None
