"""Alembic, driven from code: upgrade, downgrade, status and the schema gate at start-up.

Migrations ship inside the package (`authkeep/migrations`). Every command runs on a connection
authkeep opened, so the DSN rules of the bootstrap apply to migrations too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from authkeep.errors import MigrationFailed, SchemaBehind
from authkeep.models import Base

VERSION_TABLE = "alembic_version"


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", "authkeep:migrations")
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "the package ships at least one migration"
    return head


def expected_tables() -> set[str]:
    """Every table the models define, plus Alembic's version table."""
    return set(Base.metadata.tables) | {VERSION_TABLE}


@dataclass(frozen=True)
class SchemaState:
    current: str | None
    head: str
    known: bool

    @property
    def at_head(self) -> bool:
        return self.current == self.head

    def as_dict(self) -> dict[str, Any]:
        return {"current": self.current, "head": self.head, "at_head": self.at_head}


@dataclass(frozen=True)
class MigrationReport:
    before: str | None
    after: str | None
    head: str

    @property
    def changed(self) -> bool:
        return self.before != self.after


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def schema_state(engine: AsyncEngine) -> SchemaState:
    async with engine.connect() as conn:
        current = await conn.run_sync(_current)
    return SchemaState(current=current, head=head_revision(), known=_is_known(current))


def _is_known(revision: str | None) -> bool:
    if revision is None:
        return True
    try:
        return ScriptDirectory.from_config(alembic_config()).get_revision(revision) is not None
    except Exception:  # alembic raises its own resolution errors for unknown ids
        return False


def _run(connection: Connection, action: str, target: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    getattr(command, action)(config, target)


def _missing_tables(connection: Connection) -> set[str]:
    return expected_tables() - set(inspect(connection).get_table_names())


async def upgrade(engine: AsyncEngine, target: str = "head") -> MigrationReport:
    """Upgrade to `target`, then verify every expected table exists. Idempotent."""
    before = (await schema_state(engine)).current
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_run, "upgrade", target)
    except Exception as exc:
        raise MigrationFailed(
            f"Migration to {target} failed ({type(exc).__name__}). On PostgreSQL the whole "
            "upgrade was rolled back. Run `authkeep db check` to diagnose."
        ) from exc
    async with engine.connect() as conn:
        missing = await conn.run_sync(_missing_tables)
        after = await conn.run_sync(_current)
    if target == "head" and missing:
        raise MigrationFailed(
            f"Migration finished but these tables are missing: {', '.join(sorted(missing))}."
        )
    return MigrationReport(before=before, after=after, head=head_revision())


async def downgrade(engine: AsyncEngine, target: str) -> MigrationReport:
    before = (await schema_state(engine)).current
    async with engine.begin() as conn:
        await conn.run_sync(_run, "downgrade", target)
    after = (await schema_state(engine)).current
    return MigrationReport(before=before, after=after, head=head_revision())


async def require_head(engine: AsyncEngine) -> SchemaState:
    """The start-up gate for PostgreSQL nodes: refuse to serve a schema that is not at head."""
    state = await schema_state(engine)
    if not state.known:
        raise SchemaBehind(
            f"The database is at revision {state.current}, which this authkeep version does not "
            "know: it was migrated by a newer release. Deploy that release or newer."
        )
    if not state.at_head:
        raise SchemaBehind(
            f"The database schema is at {state.current or 'no revision (empty)'}, this version "
            f"needs {state.head}. Run `authkeep db migrate` (with DATABASE_URL_ADMIN if the app "
            "role cannot change the schema), then start again."
        )
    return state
