"""The engine, the unit of work and the outage test (SPEC §4 engine settings).

PostgreSQL: asyncpg, pre-ping, recycle 3600 s, pool 5 + 10, JIT off, statement and
idle-in-transaction timeouts. SQLite: WAL, foreign keys, busy timeout, and every write transaction
opened with `BEGIN IMMEDIATE` so a read never upgrades to a write inside a deferred transaction.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from authkeep.config import Settings
from authkeep.core.dsn import Candidate, is_sqlite
from authkeep.errors import DatabaseUnavailable

SQLITE_BUSY_TIMEOUT_MS = 5_000
# SQLSTATE classes that mean "the database is not there for us right now".
_OUTAGE_SQLSTATE_CLASSES = ("08", "53", "57", "58")
# SQLite reports unavailability only in its messages (all are OperationalError, as is bad SQL).
_SQLITE_OUTAGE_MESSAGES = (
    "database is locked",
    "disk i/o error",
    "database or disk is full",
    "unable to open database",
    "readonly database",
)
# Execution option: run this connection's transaction as a plain (deferred) read on SQLite.
SQLITE_READ_ONLY = "authkeep_sqlite_read_only"


def asyncpg_connect_args(url: URL, settings: Settings | None = None) -> tuple[URL, dict[str, Any]]:
    """Move libpq-style query parameters into asyncpg's own connect arguments.

    Users write libpq DSNs (`sslmode`, `connect_timeout`, `application_name`); asyncpg takes
    `ssl`, `timeout` and `server_settings`. The URL keeps every other parameter.
    """
    query = dict(url.query)
    args: dict[str, Any] = {}
    server_settings: dict[str, str] = {"jit": "off"}
    if settings is not None:
        server_settings["statement_timeout"] = str(settings.db_statement_timeout_ms)
        server_settings["idle_in_transaction_session_timeout"] = str(
            settings.db_idle_in_transaction_timeout_ms
        )
    if "sslmode" in query:
        args["ssl"] = str(query.pop("sslmode"))
    if "connect_timeout" in query:
        args["timeout"] = float(str(query.pop("connect_timeout")))
    if "application_name" in query:
        server_settings["application_name"] = str(query.pop("application_name"))
    args["server_settings"] = server_settings
    return url.set(query=query), args


def build_engine(url: URL, settings: Settings) -> AsyncEngine:
    """The one engine for a process, built from the DSN the bootstrap selected."""
    if is_sqlite(url):
        return _sqlite_engine(url)
    engine_url, connect_args = asyncpg_connect_args(url, settings)
    return create_async_engine(
        engine_url,
        pool_pre_ping=True,
        pool_recycle=3600,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout,
        connect_args=connect_args,
    )


def _sqlite_engine(url: URL) -> AsyncEngine:
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin (see "begin" below).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        # IMMEDIATE takes the write lock up front, so busy_timeout applies and a read-then-write
        # never fails with "database is locked" (RELIABILITY FI-DB-12).
        read_only = connection.get_execution_options().get(SQLITE_READ_ONLY, False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


def is_database_outage(exc: BaseException) -> bool:
    """True when an error means the database is unreachable, overloaded or going away."""
    if isinstance(exc, DatabaseUnavailable | PoolTimeoutError | OSError | TimeoutError):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated or isinstance(exc.orig, OSError | TimeoutError):
            return True
        sqlstate = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
        if isinstance(sqlstate, str):
            return sqlstate.startswith(_OUTAGE_SQLSTATE_CLASSES) or sqlstate == "57014"
        message = str(exc.orig).lower()
        return any(marker in message for marker in _SQLITE_OUTAGE_MESSAGES)
    return False


@dataclass
class Database:
    """The process's database: the chosen candidate, its engine and a session factory."""

    candidate: Candidate
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]

    @classmethod
    def open(cls, candidate: Candidate, settings: Settings) -> Database:
        engine = build_engine(candidate.url, settings)
        return cls(candidate, engine, async_sessionmaker(engine, expire_on_commit=False))

    @property
    def is_sqlite(self) -> bool:
        return self.candidate.is_sqlite

    async def dispose(self) -> None:
        await self.engine.dispose()

    @asynccontextmanager
    async def session_scope(self) -> AsyncIterator[AsyncSession]:
        """One unit of work: commit when the block ends, roll back when it raises.

        Outages surface as `DatabaseUnavailable`, which every caller renders as a 503.
        """
        try:
            async with self.sessions() as db:
                try:
                    yield db
                    await db.commit()
                except BaseException:
                    await db.rollback()
                    raise
        except Exception as exc:
            if is_database_outage(exc) and not isinstance(exc, DatabaseUnavailable):
                raise DatabaseUnavailable() from exc
            raise

    async def ping(self, within: float) -> None:
        """Run a real query within `within` seconds; raise `DatabaseUnavailable` otherwise."""
        try:
            async with asyncio.timeout(within):
                async with self.engine.connect() as conn:
                    conn = await conn.execution_options(**{SQLITE_READ_ONLY: True})
                    await conn.execute(text("SELECT 1"))
        except Exception as exc:
            if is_database_outage(exc):
                raise DatabaseUnavailable() from exc
            raise
