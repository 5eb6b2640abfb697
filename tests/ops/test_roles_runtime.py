"""The server's own database role at start-up (RELIABILITY CHK-OP-01, OPS-05 "as migration role
run the app → refused in strict mode"): production refuses a superuser, a table owner and a
role that can create in the schema, naming the fix; development only warns.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from urllib.parse import quote, urlsplit

import asyncpg
import pytest

from authkeep.app import open_database
from authkeep.config import load_settings
from authkeep.core.db import Database
from authkeep.core.dsn import candidates
from authkeep.core.migrate import expected_tables
from authkeep.ops.role_inputs import RoleUsageError, quote_ident
from authkeep.ops.roles import (
    UnsafeDatabaseRole,
    apply_grants,
    check_runtime_role,
    ensure_app_role,
)
from support.apps import migrate_url
from support.secrets_scan import SCAN

APP_PASSWORD = SCAN.register("runtime-app-role/p@ss:w%rd'42")
OWNER_PASSWORD = SCAN.register("runtime-owner-role-p4ssword-xyz")


def dsn_for(db_url: str, role: str, password: str) -> str:
    parts = urlsplit(db_url)
    user = f"{quote(role, safe='')}:{quote(password, safe='')}"
    return parts._replace(netloc=f"{user}@{parts.hostname}:{parts.port}").geturl()


async def admin_sql(db_url: str, *statements: str) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def open_admin(db_url: str) -> Database:
    settings = load_settings(database_url=db_url)
    return Database.open(candidates(settings)[0], settings)


@pytest.fixture
async def admin_db(postgres_url: str) -> str:
    await migrate_url(postgres_url)
    return postgres_url


@pytest.fixture
async def role_names(postgres_url: str) -> AsyncIterator[list[str]]:
    """Unique role names for this test; each is dropped afterwards (roles are cluster-wide)."""
    names: list[str] = []
    yield names
    conn = await asyncpg.connect(postgres_url)
    try:
        for name in names:
            if await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", name):
                await conn.execute(f"REASSIGN OWNED BY {quote_ident(name)} TO CURRENT_USER")
                await conn.execute(f"DROP OWNED BY {quote_ident(name)} CASCADE")
                await conn.execute(f"DROP ROLE {quote_ident(name)}")
    finally:
        await conn.close()


async def make_app_role(admin_db: str, role_names: list[str]) -> str:
    name = f"ak_rt_app_{secrets.token_hex(4)}"
    role_names.append(name)
    database = open_admin(admin_db)
    try:
        await ensure_app_role(database.engine, name, APP_PASSWORD)
    finally:
        await database.dispose()
    return dsn_for(admin_db, name, APP_PASSWORD)


async def test_production_refuses_a_superuser_and_names_the_fix(admin_db: str, make_settings):
    settings = make_settings(env="production", database_url=admin_db)
    with pytest.raises(UnsafeDatabaseRole) as refused:
        await open_database(settings)
    error = refused.value
    assert error.code == "unsafe_database_role"
    assert "is a superuser" in error.detail
    assert "authkeep db roles" in error.detail
    assert "DATABASE_URL_ADMIN" in error.detail
    assert "point DATABASE_URL at the app role" in error.detail


async def test_production_starts_as_the_app_role(admin_db: str, role_names, make_settings):
    app_dsn = await make_app_role(admin_db, role_names)
    database = await open_database(make_settings(env="production", database_url=app_dsn))
    try:
        check = await check_runtime_role(database.engine)
        await database.ping(5)
    finally:
        await database.dispose()
    assert check.safe
    assert (check.role, check.is_superuser, check.owns_tables) == (role_names[0], False, ())
    assert check.can_create_in_schema is False


async def test_production_refuses_the_owner_of_the_tables(
    postgres_url: str, role_names, make_settings
):
    """A non-superuser that ran the migrations itself (seed 000's single-user setup)."""
    owner = f"ak_rt_owner_{secrets.token_hex(4)}"
    role_names.append(owner)
    name = urlsplit(postgres_url).path.lstrip("/")
    await admin_sql(
        postgres_url,
        f"CREATE ROLE {owner} LOGIN PASSWORD '{OWNER_PASSWORD}'",
        f'ALTER DATABASE "{name}" OWNER TO {owner}',
    )
    owner_dsn = dsn_for(postgres_url, owner, OWNER_PASSWORD)
    await migrate_url(owner_dsn)

    with pytest.raises(UnsafeDatabaseRole) as refused:
        await open_database(make_settings(env="production", database_url=owner_dsn))
    detail = refused.value.detail
    assert "is a superuser" not in detail
    owned = len(expected_tables())  # every table of the schema, alembic_version included
    assert f"owns (or inherits ownership of) {owned} table(s)" in detail
    assert "authkeep db roles" in detail


async def test_a_member_of_the_owner_role_is_an_owner_too(admin_db: str, role_names, make_settings):
    app_dsn = await make_app_role(admin_db, role_names)
    owner = f"ak_rt_owner_{secrets.token_hex(4)}"
    role_names.append(owner)
    await admin_sql(
        admin_db,
        f"CREATE ROLE {owner} NOLOGIN",
        f"ALTER TABLE users OWNER TO {owner}",
        f"GRANT {owner} TO {role_names[0]}",
    )
    with pytest.raises(UnsafeDatabaseRole, match=r"owns \(or inherits ownership of\) 1 table"):
        await open_database(make_settings(env="production", database_url=app_dsn))


async def test_development_only_warns(admin_db: str, make_settings, caplog):
    caplog.set_level(logging.WARNING, logger="authkeep.ops.roles")
    database = await open_database(make_settings(database_url=admin_db))
    await database.dispose()
    [record] = [r for r in caplog.records if r.name == "authkeep.ops.roles"]
    assert record.levelno == logging.WARNING
    assert "is a superuser" in record.getMessage()
    assert "Allowed because this is development" in record.getMessage()


async def test_apply_grants_is_a_no_op_without_the_role_or_on_sqlite(
    admin_db: str, sqlite_url: str
):
    database = open_admin(admin_db)
    try:
        missing = await apply_grants(database.engine, f"ak_absent_{secrets.token_hex(4)}")
    finally:
        await database.dispose()
    assert (missing.applied, missing.changes) == (False, 0)
    assert "does not exist" in missing.reason
    await migrate_url(sqlite_url)
    sqlite = open_admin(sqlite_url)
    try:
        report = await apply_grants(sqlite.engine, "authkeep_app")
        with pytest.raises(RoleUsageError):
            await check_runtime_role(sqlite.engine)
    finally:
        await sqlite.dispose()
    assert (report.applied, report.reason) == (False, "SQLite has no database roles")
