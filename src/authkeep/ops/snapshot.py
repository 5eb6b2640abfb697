"""Per-table row counts and checksums: the one implementation behind backup, restore and copy.

Rows are fetched through SQLAlchemy Core with the models' own column types, so a UUID, an aware
datetime, a JSON document or a boolean arrives as the same Python value from SQLite and from
PostgreSQL, and renders to the same canonical JSON line. A table's checksum is the sum of the
SHA-256 digests of its rows modulo 2**256 (a multiset hash): it does not depend on the order an
engine or a collation returns rows in, so `db copy` can compare SQLite with PostgreSQL, and it
streams, so no table is held in memory.

Every function here takes a synchronous `Connection`; async callers use `conn.run_sync(...)`.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

from alembic.runtime.migration import MigrationContext
from sqlalchemy import Table, create_engine, func, inspect, select, text
from sqlalchemy.engine import URL, Connection
from sqlalchemy.pool import NullPool

from authkeep.models import Base

BATCH_ROWS = 1_000
_MODULUS = 2**256

# (what is being done, how many done, how many in total or None when unknown)
Progress = Callable[[str, int, int | None], None]


@dataclass(frozen=True)
class TableDigest:
    """One table's row count and checksum."""

    rows: int
    checksum: str

    def as_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "checksum": self.checksum}


@dataclass(frozen=True)
class Snapshot:
    """The migration head and every authkeep table's digest, as one transaction saw them."""

    head: str | None
    tables: dict[str, TableDigest] = field(default_factory=dict)

    @property
    def total_rows(self) -> int:
        return sum(digest.rows for digest in self.tables.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "head": self.head,
            "tables": {name: digest.as_dict() for name, digest in self.tables.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Snapshot:
        tables = {
            str(name): TableDigest(int(item["rows"]), str(item["checksum"]))
            for name, item in dict(data.get("tables") or {}).items()
        }
        head = data.get("head")
        return cls(head=str(head) if head is not None else None, tables=tables)


def canonical(value: Any) -> Any:
    """A JSON-ready form of one column value that is the same on every engine."""
    if isinstance(value, datetime):
        moment = value.astimezone(UTC) if value.tzinfo is not None else value
        return moment.isoformat(timespec="microseconds")
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, Decimal):
        return str(value)
    return value


def row_digest(values: Sequence[Any]) -> int:
    """SHA-256 of the row rendered as canonical JSON, as an integer."""
    line = json.dumps(
        [canonical(v) for v in values], sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return int.from_bytes(hashlib.sha256(line.encode("utf-8")).digest(), "big")


def digest_rows(rows: Iterable[Sequence[Any]]) -> TableDigest:
    """Count and checksum of any iterable of rows (the multiset hash of the module doc)."""
    count, total = 0, 0
    for row in rows:
        total = (total + row_digest(row)) % _MODULUS
        count += 1
    return TableDigest(count, f"{total:064x}")


def present_tables(connection: Connection) -> list[Table]:
    """The models' tables that exist in this database, parents before children."""
    existing = set(inspect(connection).get_table_names())
    return [table for table in Base.metadata.sorted_tables if table.name in existing]


def _columns(connection: Connection, table: Table) -> list[Any]:
    # A database at an older revision may lack columns the models have: digest what is there.
    existing = {column["name"] for column in inspect(connection).get_columns(table.name)}
    return [column for column in table.columns if column.name in existing]


def digest_table(
    connection: Connection, table: Table, on_rows: Callable[[int], None] | None = None
) -> TableDigest:
    """Stream one table in batches and digest it; `on_rows(n)` after each batch."""
    query = select(*_columns(connection, table))
    result = connection.execution_options(yield_per=BATCH_ROWS).execute(query)
    count, total = 0, 0
    for batch in result.partitions():
        part = digest_rows(batch)
        total = (total + int(part.checksum, 16)) % _MODULUS
        count += part.rows
        if on_rows is not None:
            on_rows(part.rows)
    return TableDigest(count, f"{total:064x}")


def current_head(connection: Connection) -> str | None:
    """The revision in `alembic_version`, or None for a database without authkeep's schema."""
    return MigrationContext.configure(connection).get_current_revision()


def count_rows(connection: Connection) -> dict[str, int]:
    """Row counts only (cheap): what `restore` and `copy --dry-run` show before acting."""
    return {
        table.name: int(connection.scalar(select(func.count()).select_from(table)) or 0)
        for table in present_tables(connection)
    }


def take_snapshot(connection: Connection, progress: Progress | None = None) -> Snapshot:
    """Head plus every present table's digest, read in the connection's current transaction."""
    tables = present_tables(connection)
    digests: dict[str, TableDigest] = {}
    for done, table in enumerate(tables):
        if progress is not None:
            progress(f"checksums: {table.name}", done, len(tables))
        digests[table.name] = digest_table(connection, table)
    if progress is not None:
        progress("checksums", len(tables), len(tables))
    return Snapshot(head=current_head(connection), tables=digests)


def differences(expected: Snapshot, actual: Snapshot) -> list[str]:
    """Human lines naming every way `actual` differs from `expected`; empty when equal."""
    problems: list[str] = []
    if expected.head != actual.head:
        problems.append(
            f"migration head is {actual.head or 'missing'}, expected {expected.head or 'none'}"
        )
    for name, want in expected.tables.items():
        got = actual.tables.get(name)
        if got is None:
            problems.append(f"table {name} is missing")
        elif got.rows != want.rows:
            problems.append(f"table {name}: {got.rows} rows, expected {want.rows}")
        elif got.checksum != want.checksum:
            problems.append(f"table {name}: same row count ({got.rows}) but different contents")
    for name in sorted(set(actual.tables) - set(expected.tables)):
        if actual.tables[name].rows:
            problems.append(f"table {name} has {actual.tables[name].rows} unexpected rows")
    return problems


def inspect_sqlite_file(path: str, progress: Progress | None = None) -> tuple[Snapshot, str]:
    """Snapshot and `PRAGMA integrity_check` of a closed SQLite file (a backup copy, a drill)."""
    engine = create_engine(URL.create("sqlite", database=path), poolclass=NullPool)
    try:
        with engine.connect() as connection:
            integrity = "; ".join(
                str(row[0]) for row in connection.execute(text("PRAGMA integrity_check"))
            )
            snapshot = take_snapshot(connection, progress)
    finally:
        engine.dispose()
    return snapshot, integrity
