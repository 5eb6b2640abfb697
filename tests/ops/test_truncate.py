"""`authkeep db truncate` (seed 000's nuke tool, guarded; SPEC §8): refused without `--yes`,
`--dry-run` changes nothing, one TRUNCATE that keeps `alembic_version`, PostgreSQL only.
"""

from __future__ import annotations

import asyncio
import json
import secrets

import asyncpg
import pytest
from typer.testing import CliRunner, Result

from authkeep.cli import app
from authkeep.config import load_settings
from authkeep.core.db import Database
from authkeep.core.dsn import candidates
from authkeep.ops.role_inputs import quote_ident
from authkeep.sessions import service as sessions
from authkeep.users.models import User
from support.apps import migrate_url
from support.secrets_scan import SCAN

runner = CliRunner()


def invoke(*args: str, env: dict[str, str]) -> Result:
    result = runner.invoke(app, list(args), env=env)
    SCAN.record(f"cli:{' '.join(args)}", result.output)
    return result


async def add_user_with_session(url: str) -> None:
    """A user and a login session through the session service (sessions reference users)."""
    settings = load_settings(database_url=url)
    database = Database.open(candidates(settings)[0], settings)
    try:
        async with database.session_scope() as db:
            user = User(email=f"u{secrets.token_hex(4)}@example.com", role="user")
            db.add(user)
            await db.flush()
            token, _ = await sessions.create(db, user, settings, ip="127.0.0.1", user_agent="t")
            SCAN.register(token)
    finally:
        await database.dispose()


async def counts(url: str, *tables: str) -> dict[str, int]:
    conn = await asyncpg.connect(url)
    try:
        query = "SELECT count(*) FROM {}"
        return {
            table: await conn.fetchval(query.format(".".join(map(quote_ident, table.split(".")))))
            for table in tables
        }
    finally:
        await conn.close()


@pytest.fixture
async def filled_db(postgres_url: str) -> str:
    """A migrated database (admin URL) with two users, each with a session."""
    await migrate_url(postgres_url)
    await add_user_with_session(postgres_url)
    await add_user_with_session(postgres_url)
    return postgres_url


TABLES = ("users", "sessions", "alembic_version")


def test_without_yes_it_lists_the_tables_and_refuses_with_exit_2(filled_db: str):
    env = {"DATABASE_URL_ADMIN": filled_db}
    before = asyncio.run(counts(filled_db, *TABLES))
    result = invoke("db", "truncate", env=env)
    assert result.exit_code == 2
    assert "users" in result.stdout
    assert "sessions" in result.stdout
    assert "Refused without --yes" in result.output
    as_json = invoke("db", "truncate", "--json", env=env)
    assert as_json.exit_code == 2
    body = json.loads(as_json.stdout)
    assert (body["ok"], body["error"]) == (False, "confirmation_required")
    assert {"table": "users", "rows": 2} in body["tables"]
    assert (
        asyncio.run(counts(filled_db, *TABLES))
        == before
        == {
            "users": 2,
            "sessions": 2,
            "alembic_version": 1,
        }
    )


def test_dry_run_lists_and_changes_nothing(filled_db: str):
    result = invoke(
        "db", "truncate", "--dry-run", "--yes", "--json", env={"DATABASE_URL": filled_db}
    )
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert (body["ok"], body["dry_run"], body["truncated"]) == (True, True, False)
    listed = {t["table"] for t in body["tables"]}
    assert {"users", "sessions", "one_time_tokens", "audit_log"} <= listed
    assert "alembic_version" not in listed
    assert body["kept"] == ["alembic_version"]
    assert body["rows"] == 4
    assert asyncio.run(counts(filled_db, "users", "sessions")) == {"users": 2, "sessions": 2}


def test_yes_empties_the_tables_but_keeps_the_schema_revision(filled_db: str):
    env = {"DATABASE_URL_ADMIN": filled_db}
    result = invoke("db", "truncate", "--yes", env=env)
    assert result.exit_code == 0, result.output
    assert "Emptied" in result.stdout
    assert asyncio.run(counts(filled_db, *TABLES)) == {
        "users": 0,
        "sessions": 0,
        "alembic_version": 1,
    }
    status = invoke("db", "status", env={"DATABASE_URL": filled_db})
    assert status.exit_code == 0  # still at head: the server starts again without a migration


def test_include_migrations_empties_alembic_version_too(filled_db: str):
    env = {"DATABASE_URL_ADMIN": filled_db}
    result = invoke("db", "truncate", "--yes", "--include-migrations", "--json", env=env)
    assert result.exit_code == 0, result.output
    assert "alembic_version" in {t["table"] for t in json.loads(result.stdout)["tables"]}
    assert asyncio.run(counts(filled_db, *TABLES)) == {
        "users": 0,
        "sessions": 0,
        "alembic_version": 0,
    }


def test_a_referencing_table_elsewhere_is_listed_and_its_identity_restarts(filled_db: str):
    """CASCADE empties nothing the operator was not shown; RESTART IDENTITY resets serials."""

    async def add_notes() -> None:
        conn = await asyncpg.connect(filled_db)
        try:
            await conn.execute(
                "CREATE SCHEMA extra; CREATE TABLE extra.notes (id serial PRIMARY KEY, "
                "user_id uuid REFERENCES public.users (id));"
                "INSERT INTO extra.notes (user_id) SELECT id FROM users"
            )
        finally:
            await conn.close()

    asyncio.run(add_notes())
    env = {"DATABASE_URL_ADMIN": filled_db}
    dry = invoke("db", "truncate", "--dry-run", "--json", env=env)
    assert {"table": "extra.notes", "rows": 2} in json.loads(dry.stdout)["tables"]
    assert invoke("db", "truncate", "--yes", env=env).exit_code == 0

    async def next_note_id() -> int:
        conn = await asyncpg.connect(filled_db)
        try:
            return int(await conn.fetchval("INSERT INTO extra.notes DEFAULT VALUES RETURNING id"))
        finally:
            await conn.close()

    assert asyncio.run(next_note_id()) == 1


def test_sqlite_is_refused_with_exit_2(sqlite_url: str):
    asyncio.run(migrate_url(sqlite_url))
    result = invoke("db", "truncate", "--yes", env={"DATABASE_URL": sqlite_url})
    assert result.exit_code == 2
    assert "needs PostgreSQL" in result.output
    assert "delete the file" in result.output
