"""`authkeep db roles` and `--verify` on a real PostgreSQL (seed 002's two roles; RELIABILITY
CHK-OP-01, OPS-05, OPS-01 for idempotency). Every role is unique to its test and dropped after.
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import secrets
import select
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from urllib.parse import quote, urlsplit

import asyncpg
import pytest
from sqlalchemy import make_url
from typer.testing import CliRunner, Result

from authkeep.cli import app
from authkeep.core.migrate import expected_tables
from authkeep.ops import scram
from authkeep.ops.role_inputs import PASSWORD_ENV, app_role_url, quote_ident
from authkeep.ops.roles_verify import DDL_ACTIONS
from support.apps import migrate_url
from support.secrets_scan import FIGURES, SCAN

runner = CliRunner()

# Every character that breaks naive SQL or DSN handling: ' " \ @ / % : and a space.
AWKWARD = SCAN.register("ak-app'pw\"q\\b@s/l%p:c 0123456789")
# Non-ASCII, with a ligature SASLprep maps to "fi": the client-side verifier must agree.
ROTATED = SCAN.register("ﬁrst-rotation Ünïcode pässwörd 2024")


def invoke(*args: str, env: dict[str, str]) -> Result:
    result = runner.invoke(app, list(args), env=env)
    SCAN.record(f"cli:{' '.join(args)}", result.output)
    return result


def role_dsn(db_url: str, role: str, password: str) -> str:
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


async def admin_fetchrow(db_url: str, query: str, *args: object) -> asyncpg.Record:
    conn = await asyncpg.connect(db_url)
    try:
        return await conn.fetchrow(query, *args)
    finally:
        await conn.close()


async def drop_role(db_url: str, role: str) -> None:
    """Roles are cluster-wide: drop what the role holds in the test database, then the role."""
    conn = await asyncpg.connect(db_url)
    try:
        if await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role):
            await conn.execute(f"REASSIGN OWNED BY {quote_ident(role)} TO CURRENT_USER")
            await conn.execute(f"DROP OWNED BY {quote_ident(role)} CASCADE")
            await conn.execute(f"DROP ROLE {quote_ident(role)}")
    finally:
        await conn.close()


@pytest.fixture
async def admin_db(postgres_url: str) -> str:
    """A fresh database at head; its URL is a superuser's (the migration/admin role)."""
    await migrate_url(postgres_url)
    return postgres_url


@pytest.fixture
async def app_role(postgres_url: str) -> AsyncIterator[str]:
    """A unique role name that needs quoting (space, double quote, capitals)."""
    name = f'ak App "{secrets.token_hex(4)}" role'
    yield name
    await drop_role(postgres_url, name)


def roles_env(admin_db: str, password: str = AWKWARD) -> dict[str, str]:
    return {"DATABASE_URL_ADMIN": admin_db, PASSWORD_ENV: password}


def create_role(admin_db: str, role: str, password: str = AWKWARD) -> dict:  # type: ignore[type-arg]
    result = invoke("db", "roles", "--role", role, "--json", env=roles_env(admin_db, password))
    assert result.exit_code == 0, result.output
    body: dict = json.loads(result.stdout)  # type: ignore[type-arg]
    return body


def verify(admin_db: str, role: str, password: str = AWKWARD) -> tuple[Result, dict]:  # type: ignore[type-arg]
    env = roles_env(admin_db, password)
    result = invoke("db", "roles", "--role", role, "--verify", "--json", env=env)
    return result, json.loads(result.stdout)


async def row_counts(db_url: str) -> dict[str, int]:
    conn = await asyncpg.connect(db_url)
    try:
        names = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        count = "SELECT count(*) FROM {}"
        return {row[0]: await conn.fetchval(count.format(quote_ident(row[0]))) for row in names}
    finally:
        await conn.close()


def test_roles_then_verify_refuses_every_ddl_with_42501(admin_db: str, app_role: str):
    """CHK-OP-01 / OPS-05: as the app role, every DDL, TRUNCATE and role GRANT → 42501."""
    created = create_role(admin_db, app_role)
    assert created["created"] is True
    assert created["problems"] == []
    assert created["database_url"].startswith(f"postgresql://{quote(app_role, safe='')}:<")
    before = asyncio.run(row_counts(admin_db))

    result, report = verify(admin_db, app_role)

    assert result.exit_code == 0, result.output
    assert report["ok"] is True
    assert report["role"] == app_role
    assert set(report["tables"]) == expected_tables()
    attempts = report["attempts"]
    ddl = [a for a in attempts if a["action"] in DDL_ACTIONS]
    assert {a["action"] for a in ddl} == DDL_ACTIONS
    assert [a for a in ddl if a["sqlstate"] != "42501"] == []
    per_table = {(a["target"], a["action"]): a for a in attempts}
    for table in expected_tables():
        for action in ("ALTER", "DROP", "TRUNCATE"):
            assert per_table[(table, action)]["sqlstate"] == "42501"
        grant = per_table[(table, "GRANT")]
        assert grant["outcome"] == "refused"
        assert grant["sqlstate"] in {"42501", "01007"}
    for action in ("SELECT", "INSERT", "UPDATE", "DELETE"):
        assert per_table[("users", action)]["outcome"] == "allowed"
    for action in ("INSERT", "UPDATE", "DELETE"):
        assert per_table[("alembic_version", action)]["sqlstate"] == "42501"
    assert all(fact["ok"] for fact in report["facts"])
    assert asyncio.run(row_counts(admin_db)) == before  # verification changed no data

    attributes = asyncio.run(
        admin_fetchrow(
            admin_db,
            "SELECT rolsuper, rolcreatedb, rolcreaterole, rolcanlogin, "
            "has_schema_privilege(oid, 'public', 'CREATE') AS can_create, "
            "(SELECT count(*) FROM pg_shdepend WHERE refobjid = r.oid AND deptype = 'o') AS owned "
            "FROM pg_roles r WHERE rolname = $1",
            app_role,
        )
    )
    assert dict(attributes) == {
        "rolsuper": False,
        "rolcreatedb": False,
        "rolcreaterole": False,
        "rolcanlogin": True,
        "can_create": False,
        "owned": 0,
    }
    figures = report["figures"]
    FIGURES.append(
        f"OPS-05/CHK-OP-01: {figures['ddl_attempts']} DDL/TRUNCATE/GRANT-role attempts as the app "
        f"role, {figures['ddl_refused_42501']} refused with SQLSTATE 42501 "
        f"({100 * figures['ddl_refused_42501'] // figures['ddl_attempts']} %); "
        f"{figures['table_grant_nothing_granted']}/{figures['table_grant_attempts']} GRANT ON "
        "TABLE attempts granted nothing (01007); "
        f"{figures['as_expected']}/{figures['checks']} checks as expected"
    )


def test_verify_text_is_a_table_by_table_report(admin_db: str, app_role: str):
    create_role(admin_db, app_role)
    result = invoke("db", "roles", "--role", app_role, "--verify", env=roles_env(admin_db))
    assert result.exit_code == 0, result.output
    assert "table by table" in result.stdout
    assert "sessions" in result.stdout
    assert "CREATE EXTENSION" in result.stdout
    assert "app role verified" in result.stdout


def test_a_table_a_later_migration_creates_is_reachable(admin_db: str, app_role: str):
    """Default privileges: a table the admin creates after `db roles` needs no new grant."""
    create_role(admin_db, app_role)
    asyncio.run(
        admin_sql(admin_db, "CREATE TABLE later_table (id serial PRIMARY KEY, note text NOT NULL)")
    )

    async def use_it_as_the_app_role() -> tuple[int, str]:
        conn = await asyncpg.connect(role_dsn(admin_db, app_role, AWKWARD))
        try:
            async with conn.transaction():
                new_id = await conn.fetchval(
                    "INSERT INTO later_table (note) VALUES ('a') RETURNING id"
                )
                await conn.execute("UPDATE later_table SET note = 'b' WHERE id = $1", new_id)
                note = await conn.fetchval("SELECT note FROM later_table WHERE id = $1", new_id)
                await conn.execute("DELETE FROM later_table WHERE id = $1", new_id)
            return new_id, note
        finally:
            await conn.close()

    assert asyncio.run(use_it_as_the_app_role()) == (1, "b")
    result, report = verify(admin_db, app_role)
    assert result.exit_code == 0, result.output
    later = [a for a in report["attempts"] if a["target"] == "later_table"]
    assert {a["action"]: a["outcome"] for a in later} == {
        "SELECT": "allowed",
        "INSERT": "allowed",
        "UPDATE": "allowed",
        "DELETE": "allowed",
        "ALTER": "refused",
        "DROP": "refused",
        "TRUNCATE": "refused",
        "GRANT": "refused",
    }


def test_db_roles_twice_changes_nothing_the_second_time(admin_db: str, app_role: str):
    """OPS-01 for `db roles`: exit 0 both times, 0 changes on the second run."""
    first = create_role(admin_db, app_role)
    second = create_role(admin_db, app_role)
    assert first["changes"] > 0
    assert second["created"] is False
    assert second["password_changed"] is False
    assert second["attributes_changed"] == []
    assert second["grants"]["granted"] == second["grants"]["revoked"] == []
    assert second["changes"] == 0
    text = invoke("db", "roles", "--role", app_role, env=roles_env(admin_db))
    assert text.exit_code == 0
    assert "unchanged (0 change(s))" in text.stdout
    FIGURES.append(f"OPS-01 db roles: {first['changes']} changes on 1st run, 0 on 2nd; exit 0 both")


def test_running_again_with_another_password_rotates_it(admin_db: str, app_role: str):
    create_role(admin_db, app_role, AWKWARD)
    rotated = create_role(admin_db, app_role, ROTATED)
    assert rotated["password_changed"] is True
    assert rotated["changes"] == 1  # only the password

    async def login(password: str) -> str:
        conn = await asyncpg.connect(role_dsn(admin_db, app_role, password))
        try:
            return str(await conn.fetchval("SELECT current_user"))
        finally:
            await conn.close()

    with pytest.raises(asyncpg.InvalidPasswordError):
        asyncio.run(login(AWKWARD))
    assert asyncio.run(login(ROTATED)) == app_role
    result, _ = verify(admin_db, app_role, AWKWARD)
    assert result.exit_code == 1
    assert "Cannot connect as the app role" in result.stdout


def test_verify_fails_and_names_the_table_when_a_grant_is_missing(admin_db: str, app_role: str):
    create_role(admin_db, app_role)
    asyncio.run(admin_sql(admin_db, f"REVOKE DELETE ON users FROM {quote_ident(app_role)}"))

    result, report = verify(admin_db, app_role)

    assert result.exit_code == 1
    assert report["ok"] is False
    [mismatch] = report["mismatches"]
    assert (mismatch["target"], mismatch["action"]) == ("users", "DELETE")
    assert (mismatch["expected"], mismatch["outcome"]) == ("allowed", "refused")
    assert mismatch["sqlstate"] == "42501"
    text = invoke("db", "roles", "--role", app_role, "--verify", env=roles_env(admin_db))
    assert text.exit_code == 1
    assert "✗ users: DELETE" in text.stdout
    assert "NOT as expected" in text.stdout


def test_db_migrate_reapplies_the_grants(admin_db: str, app_role: str):
    """A grant lost between deploys comes back with the next `db migrate`."""
    create_role(admin_db, app_role)
    asyncio.run(
        admin_sql(admin_db, f"REVOKE SELECT, DELETE ON sessions FROM {quote_ident(app_role)}")
    )
    assert verify(admin_db, app_role)[0].exit_code == 1
    env = {"DATABASE_URL_ADMIN": admin_db, "AUTHKEEP_DB_APP_ROLE": app_role}
    migrated = invoke("db", "migrate", env=env)
    assert migrated.exit_code == 0, migrated.output
    result, report = verify(admin_db, app_role)
    assert result.exit_code == 0, report["mismatches"]


def test_roles_before_the_first_migration_then_migrate(postgres_url: str, app_role: str):
    """On an empty database the default privileges cover every table the migrations create;
    migrate then takes write access to alembic_version away again."""
    create_role(postgres_url, app_role)
    env = {"DATABASE_URL_ADMIN": postgres_url, "AUTHKEEP_DB_APP_ROLE": app_role}
    assert invoke("db", "migrate", env=env).exit_code == 0
    result, report = verify(postgres_url, app_role)
    assert result.exit_code == 0, report["mismatches"]
    assert set(report["tables"]) == expected_tables()


def test_without_a_password_and_without_a_terminal_it_exits_2(admin_db: str, app_role: str):
    result = invoke("db", "roles", "--role", app_role, env={"DATABASE_URL_ADMIN": admin_db})
    assert result.exit_code == 2
    assert PASSWORD_ENV in result.output
    assert "never read from the command line" in result.output
    row = asyncio.run(
        admin_fetchrow(admin_db, "SELECT 1 FROM pg_roles WHERE rolname = $1", app_role)
    )
    assert row is None


def _read_until(fd: int, marker: bytes, seen: bytearray, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while marker not in seen:
        assert time.monotonic() < deadline, f"never saw {marker!r} in {bytes(seen)!r}"
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                seen.extend(os.read(fd, 4096))
            except OSError:  # the child closed the terminal
                return


def test_in_a_terminal_the_password_is_prompted_hidden_and_confirmed(admin_db: str, app_role: str):
    """A real process on a pseudo-terminal: hidden prompt, confirmation, nothing echoed."""
    controller, terminal = pty.openpty()
    env = {**os.environ, "DATABASE_URL_ADMIN": admin_db, "COLUMNS": "200"}
    child = subprocess.Popen(
        [sys.executable, "-m", "authkeep", "db", "roles", "--role", app_role],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env=env,
        start_new_session=True,
    )
    os.close(terminal)
    seen = bytearray()
    try:
        # The trailing space is written by getpass after it turned echo off (and flushed input).
        _read_until(controller, b"App role password: ", seen)
        os.write(controller, AWKWARD.encode() + b"\n")
        _read_until(controller, b"confirmation: ", seen)
        os.write(controller, AWKWARD.encode() + b"\n")
        _read_until(controller, b"roles --verify", seen)
        assert child.wait(timeout=60) == 0, bytes(seen)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        os.close(controller)
    output = SCAN.record("pty:db roles", bytes(seen).decode(errors="replace"))
    assert "created" in output
    assert AWKWARD not in output
    result, report = verify(admin_db, app_role)
    assert result.exit_code == 0, report["mismatches"]


def test_sqlite_is_refused_with_exit_2(sqlite_url: str):
    env = {"DATABASE_URL": sqlite_url, PASSWORD_ENV: AWKWARD}
    result = invoke("db", "roles", env=env)
    assert result.exit_code == 2
    assert "needs PostgreSQL" in result.output


@pytest.mark.parametrize("name", ["pg_app", "public", "x" * 64, ""])
def test_reserved_or_too_long_role_names_exit_2(name: str):
    result = invoke("db", "roles", "--role", name, env={PASSWORD_ENV: AWKWARD})
    assert result.exit_code == 2
    assert "role name" in result.output or "reserved" in result.output


def test_a_short_password_is_refused(admin_db: str, app_role: str):
    result = invoke("db", "roles", "--role", app_role, env=roles_env(admin_db, "short"))
    assert result.exit_code == 2
    assert "at least 16 characters" in result.output


def test_a_role_that_owns_tables_is_reported_with_the_fix(admin_db: str, app_role: str):
    asyncio.run(
        admin_sql(
            admin_db,
            f"CREATE ROLE {quote_ident(app_role)} LOGIN",
            f"ALTER TABLE users OWNER TO {quote_ident(app_role)}",
        )
    )
    result = invoke("db", "roles", "--role", app_role, "--json", env=roles_env(admin_db))
    assert result.exit_code == 1
    [problem] = json.loads(result.stdout)["problems"]
    assert "owns 1 object(s)" in problem
    assert f"REASSIGN OWNED BY {quote_ident(app_role)}" in problem


def test_an_unsafe_existing_role_is_made_safe(admin_db: str, app_role: str):
    asyncio.run(
        admin_sql(admin_db, f"CREATE ROLE {quote_ident(app_role)} NOLOGIN CREATEDB CREATEROLE")
    )
    report = create_role(admin_db, app_role)
    assert report["created"] is False
    assert sorted(report["attributes_changed"]) == ["LOGIN", "NOCREATEDB", "NOCREATEROLE"]
    assert verify(admin_db, app_role)[0].exit_code == 0


def test_the_app_role_url_encodes_the_password():
    admin = make_url("postgresql+asyncpg://admin:secret@db.example:5432/app?sslmode=require")
    url = app_role_url(admin, "authkeep_app", AWKWARD)
    rendered = url.render_as_string(hide_password=False)
    userinfo = rendered.split("://", 1)[1].rsplit("@", 1)[0]
    assert userinfo.count("@") == userinfo.count("/") == 0  # every @ and / is encoded
    assert {"%40", "%2F", "%25", "%3A", "%27", "%22", "%5C"} <= {
        userinfo[i : i + 3] for i in range(len(userinfo))
    }
    again = make_url(rendered)
    assert (again.username, again.password, again.host, again.database) == (
        "authkeep_app",
        AWKWARD,
        "db.example",
        "app",
    )
    assert again.query["sslmode"] == "require"


def test_scram_verifiers_match_only_their_password():
    verifier = scram.verifier(AWKWARD)
    assert verifier.startswith("SCRAM-SHA-256$4096:")
    assert AWKWARD not in verifier
    assert scram.matches(AWKWARD, verifier)
    assert not scram.matches(ROTATED, verifier)
    assert not scram.matches(AWKWARD, "md5abcdef")
    assert not scram.matches(AWKWARD, "SCRAM-SHA-256$garbage")
    assert scram.saslprep("ﬁ") == b"fi"  # NFKC, as PostgreSQL and asyncpg apply it
    assert scram.saslprep("é\u0007") == "é\u0007".encode()  # prohibited → raw bytes
