"""`authkeep db truncate`: empty every table, guarded (seed 000's "nuke" tool, SPEC §8).

PostgreSQL only. One `TRUNCATE … RESTART IDENTITY CASCADE` statement in one transaction, so it
either empties everything or nothing. The listed tables are exactly what goes: the list is closed
over foreign keys (a table elsewhere that references one of them is listed too), so CASCADE never
empties a table the operator was not shown. `alembic_version` stays unless asked, so the schema
stays at its revision and the server starts again without a migration.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from authkeep.core.migrate import VERSION_TABLE
from authkeep.errors import AuthkeepError
from authkeep.ops.role_inputs import RoleUsageError
from authkeep.ops.roles import SCHEMA

LOCK_TIMEOUT = "10s"
Progress = Callable[[str, int, int | None], None]

# Tables of the schema, then every table (any schema) whose foreign keys reach one of them.
# `oid::regclass::text` is the server's own quoted, qualified-when-needed name.
_TABLES = text(
    """
    WITH RECURSIVE target(oid) AS (
      SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
       WHERE n.nspname = :schema AND c.relkind IN ('r', 'p') AND NOT c.relispartition
         AND (:include_migrations OR c.relname <> :version_table)
      UNION
      SELECT con.conrelid FROM pg_constraint con JOIN target t ON con.confrelid = t.oid
       WHERE con.contype = 'f'
    )
    SELECT c.oid::regclass::text FROM target JOIN pg_class c ON c.oid = target.oid
     ORDER BY 1
    """
)


class TruncateFailed(AuthkeepError):
    code = "truncate_failed"


@dataclass
class TruncateReport:
    """The tables (with their row counts before) and whether they were emptied."""

    tables: dict[str, int] = field(default_factory=dict)
    kept: list[str] = field(default_factory=list)
    truncated: bool = False

    @property
    def rows(self) -> int:
        return sum(self.tables.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "tables": [{"table": name, "rows": rows} for name, rows in self.tables.items()],
            "rows": self.rows,
            "kept": self.kept,
            "truncated": self.truncated,
        }


async def truncate_tables(
    engine: AsyncEngine,
    *,
    execute: bool,
    include_migrations: bool = False,
    progress: Progress | None = None,
) -> TruncateReport:
    """List the tables and their row counts; with `execute`, empty them all in one statement."""
    if engine.dialect.name != "postgresql":
        raise RoleUsageError(
            "`db truncate` is PostgreSQL only. For a SQLite development database, stop the "
            "server and delete the file (by default data/authkeep.db)."
        )
    try:
        async with engine.begin() as conn:
            await conn.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
            report = await _plan(conn, include_migrations, progress)
            if execute and report.tables:
                names = ", ".join(report.tables)
                await conn.exec_driver_sql(f"TRUNCATE TABLE {names} RESTART IDENTITY CASCADE")
                report.truncated = True
    except DBAPIError as exc:
        sqlstate = getattr(exc.orig, "sqlstate", None) or "unknown"
        why = {
            "55P03": " The tables are in use: stop the server (or wait) and try again.",
            "42501": " The role lacks the right: use DATABASE_URL_ADMIN (the table owner).",
        }.get(sqlstate, "")
        raise TruncateFailed(
            f"Nothing was truncated: PostgreSQL refused (SQLSTATE {sqlstate}).{why}"
        ) from None
    return report


async def _plan(
    conn: AsyncConnection, include_migrations: bool, progress: Progress | None
) -> TruncateReport:
    params = {
        "schema": SCHEMA,
        "include_migrations": include_migrations,
        "version_table": VERSION_TABLE,
    }
    names = [str(row[0]) for row in await conn.execute(_TABLES, params)]
    report = TruncateReport(kept=[] if include_migrations else [VERSION_TABLE])
    for done, name in enumerate(names):
        if progress is not None:
            progress(f"counting {name}", done, len(names))
        # `name` is the server's own regclass rendering: already quoted where needed.
        count = await conn.exec_driver_sql(f"SELECT count(*) FROM {name}")  # noqa: S608
        report.tables[name] = int(count.scalar_one())
    if progress is not None:
        progress("counted", len(names), len(names))
    if include_migrations is False and not await _exists(conn, VERSION_TABLE):
        report.kept = []
    return report


async def _exists(conn: AsyncConnection, table: str) -> bool:
    found = await conn.scalar(
        text("SELECT to_regclass(:name) IS NOT NULL"), {"name": f'"{SCHEMA}"."{table}"'}
    )
    return bool(found)
