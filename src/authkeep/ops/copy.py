"""`authkeep db copy`: move every row from one database to another (SQLite → PostgreSQL).

Both databases must be at this version's migration head: the schema comes from `authkeep db
migrate`, never from the copy. Tables go parents first (`Base.metadata.sorted_tables`), in
batches, inside ONE target transaction, so a failure leaves the target as it was. Rows are
inserted with `ON CONFLICT DO NOTHING`: running the copy again adds nothing twice. Afterwards the
counts and checksums of every table are compared, source against target, computed from rows
read through the models' types so both engines render them identically; a target that already
held other or different rows fails that comparison and the command says which tables differ.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Table, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from authkeep.config import Settings
from authkeep.core import migrate
from authkeep.core.bootstrap import probe
from authkeep.core.db import SQLITE_READ_ONLY, Database
from authkeep.core.dsn import Candidate, normalise
from authkeep.errors import AuthkeepError
from authkeep.models import Base
from authkeep.ops.restore import no_timeouts
from authkeep.ops.snapshot import BATCH_ROWS, Progress, Snapshot, count_rows, differences
from authkeep.ops.snapshot import take_snapshot as _take_snapshot


class CopyFailed(AuthkeepError):
    code = "copy_failed"


@dataclass
class TablePlan:
    name: str
    source_rows: int
    target_rows: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "table": self.name,
            "source_rows": self.source_rows,
            "target_rows": self.target_rows,
        }


@dataclass
class CopyReport:
    """The plan, what was added, and the verification of every table."""

    source: str
    target: str
    plan: list[TablePlan]
    dry_run: bool
    added: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "dry_run": self.dry_run,
            "source": self.source,
            "target": self.target,
            "tables": [
                {**item.as_dict(), "added": self.added.get(item.name)} for item in self.plan
            ],
            "verified": not self.dry_run and self.ok,
            "problems": self.problems,
            "seconds": round(self.seconds, 3),
        }


async def _open(settings: Settings, raw: str, flag: str) -> Database:
    """Open `raw` (given as `flag`) after a real probe, so a bad DSN fails with its fix."""
    candidate = Candidate(flag, normalise(raw, flag, connect_timeout=settings.db_connect_timeout))
    result = await probe(candidate, settings.db_probe_timeout)
    if not result.ok:
        raise CopyFailed(f"{flag} ({candidate.display}): {result.message}. {result.fix}")
    database = Database.open(candidate, settings)
    state = await migrate.schema_state(database.engine)
    if not state.at_head:
        await database.dispose()
        raise CopyFailed(
            f"{flag} ({candidate.display}) is at schema {state.current or 'nothing (empty)'}, "
            f"this version needs {state.head}. Run `authkeep db migrate` against it first "
            f"(e.g. `DATABASE_URL_ADMIN=<{flag} URL> authkeep db migrate`)."
        )
    return database


async def copy_database(
    settings: Settings,
    source_url: str,
    target_url: str,
    *,
    dry_run: bool = False,
    batch_size: int = BATCH_ROWS,
    progress: Progress | None = None,
) -> CopyReport:
    """Copy every authkeep table from `source_url` to `target_url`, then verify (module doc)."""
    started = time.perf_counter()
    source = await _open(settings, source_url, "--from")
    try:
        target = await _open(settings, target_url, "--to")
        try:
            report = await _copy(source, target, dry_run, batch_size, progress)
        finally:
            await target.dispose()
    finally:
        await source.dispose()
    report.seconds = time.perf_counter() - started
    return report


async def _rows(database: Database) -> dict[str, int]:
    async with database.engine.connect() as conn:
        conn = await conn.execution_options(**{SQLITE_READ_ONLY: True})
        return await conn.run_sync(count_rows)


async def _copy(
    source: Database, target: Database, dry_run: bool, batch_size: int, progress: Progress | None
) -> CopyReport:
    before_source, before_target = await _rows(source), await _rows(target)
    plan = [
        TablePlan(t.name, before_source.get(t.name, 0), before_target.get(t.name, 0))
        for t in Base.metadata.sorted_tables
    ]
    report = CopyReport(source.candidate.display, target.candidate.display, plan, dry_run)
    if dry_run:
        return report
    total = sum(item.source_rows for item in plan)
    done = 0

    def advance(table: str, rows: int) -> None:
        nonlocal done
        done += rows
        if progress is not None:
            progress(f"copying {table}", done, total)

    async with source.engine.connect() as reader, target.engine.connect() as writer:
        reader = await reader.execution_options(**{SQLITE_READ_ONLY: True})
        async with reader.begin(), writer.begin():
            await no_timeouts(writer)
            for table in Base.metadata.sorted_tables:
                await _copy_table(reader, writer, table, batch_size, advance)
    after_target = await _rows(target)
    report.added = {t: after_target.get(t, 0) - before_target.get(t, 0) for t in after_target}
    report.problems = differences(
        await _snapshot(source, progress), await _snapshot(target, progress)
    )
    return report


async def _copy_table(
    reader: AsyncConnection,
    writer: AsyncConnection,
    table: Table,
    batch_size: int,
    advance: Callable[[str, int], None],
) -> None:
    insert = _insert_ignoring_conflicts(writer, table)
    result = await reader.stream(select(table).execution_options(yield_per=batch_size))
    async for batch in result.partitions(batch_size):
        try:
            await writer.execute(insert, [dict(row._mapping) for row in batch])
        except IntegrityError as exc:
            # The driver's message quotes row values; the table and the kind are enough.
            raise CopyFailed(
                f"The target refused rows of table {table.name} "
                f"({type(exc.orig).__name__}): it holds rows that conflict with the source. "
                "Nothing was written (the copy is one transaction); copy into an empty, "
                "migrated database."
            ) from None
        advance(table.name, len(batch))


def _insert_ignoring_conflicts(writer: AsyncConnection, table: Table) -> Any:
    if writer.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    return sqlite.insert(table).on_conflict_do_nothing()


async def _snapshot(database: Database, progress: Progress | None) -> Snapshot:
    async with database.engine.connect() as conn:
        conn = await conn.execution_options(**{SQLITE_READ_ONLY: True})
        async with conn.begin():
            await no_timeouts(conn)
            return await conn.run_sync(_take_snapshot, progress)
