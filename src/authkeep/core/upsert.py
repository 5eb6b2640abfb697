"""INSERT … ON CONFLICT for both engines: SQLite and PostgreSQL spell it the same way in
SQLAlchemy, but each through its own dialect's `insert`."""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession


def insert_for(db: AsyncSession, table: Any) -> Any:
    """The dialect's `insert(table)`, which offers `on_conflict_do_update/nothing`."""
    if db.get_bind().dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)
