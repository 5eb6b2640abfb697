"""`authkeep db roles --verify`: connect AS the app role and prove what it can and cannot do
(RELIABILITY CHK-OP-01, OPS-05).

Every check is a real statement on the live database inside one transaction that is always
rolled back, each in its own savepoint, so no row changes. Row rights use statements that touch
no row (`INSERT … SELECT … WHERE false`, `UPDATE … WHERE false`): PostgreSQL checks privileges
before it runs a plan, so they answer 42501 exactly when the right is missing. DDL (ALTER, DROP,
TRUNCATE, CREATE TABLE/SCHEMA/EXTENSION, GRANT of an owner's role) must fail with 42501.

`GRANT … ON TABLE` by a role that holds any privilege on the table is, by the SQL standard, not
an error: PostgreSQL answers warning 01007 "no privileges were granted". That check passes when
the table's ACL is unchanged afterwards, and is counted apart from the 42501 refusals.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import asyncpg
from sqlalchemy.engine import URL

from authkeep.core.bootstrap import probe
from authkeep.core.db import asyncpg_connect_args
from authkeep.core.dsn import Candidate
from authkeep.core.migrate import VERSION_TABLE
from authkeep.ops.role_inputs import PASSWORD_ENV, quote_ident
from authkeep.ops.roles import SCHEMA, RoleSetupError

ALLOWED, REFUSED, ERROR, SKIPPED = "allowed", "refused", "error", "skipped"
DDL_ACTIONS = {
    "ALTER",
    "DROP",
    "TRUNCATE",
    "CREATE TABLE",
    "CREATE SCHEMA",
    "CREATE EXTENSION",
    "GRANT ROLE",
}
PROBE_NAME = "authkeep_verify_probe"
CONNECT_TIMEOUT = 10.0
# (what is being done, how many done, how many in total)
Progress = Callable[[str, int, int | None], None]


@dataclass
class Attempt:
    """One real statement run as the app role, and whether its outcome was the expected one."""

    target: str
    action: str
    expected: str
    outcome: str
    sqlstate: str | None = None
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome in (self.expected, SKIPPED)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


@dataclass
class Fact:
    """An attribute of the role itself (superuser, owned objects…) and the value it must have."""

    name: str
    value: bool | int
    expected: bool | int

    @property
    def ok(self) -> bool:
        return self.value == self.expected

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


@dataclass
class VerifyReport:
    role: str
    server_version: str = ""
    tables: list[str] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)
    facts: list[Fact] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(a.ok for a in self.attempts) and all(f.ok for f in self.facts)

    @property
    def mismatches(self) -> list[Attempt]:
        return [a for a in self.attempts if not a.ok]

    def figures(self) -> dict[str, int]:
        ddl = [a for a in self.attempts if a.action in DDL_ACTIONS and a.outcome != SKIPPED]
        grants = [a for a in self.attempts if a.action == "GRANT"]
        return {
            "checks": len(self.attempts) + len(self.facts),
            "as_expected": sum(a.ok for a in self.attempts) + sum(f.ok for f in self.facts),
            "ddl_attempts": len(ddl),
            "ddl_refused_42501": sum(a.sqlstate == "42501" for a in ddl),
            "table_grant_attempts": len(grants),
            "table_grant_nothing_granted": sum(a.outcome == REFUSED for a in grants),
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "role": self.role,
            "server_version": self.server_version,
            "tables": self.tables,
            "attempts": [a.as_dict() for a in self.attempts],
            "facts": [f.as_dict() for f in self.facts],
            "mismatches": [a.as_dict() for a in self.mismatches],
            "figures": self.figures(),
        }


async def _connect(url: URL) -> asyncpg.Connection:
    result = await probe(Candidate(PASSWORD_ENV, url), CONNECT_TIMEOUT)
    if not result.ok:
        raise RoleSetupError(
            f"Cannot connect as the app role {url.username!r} "
            f"({result.candidate.display}): {result.message}. {result.fix}"
        )
    target, args = asyncpg_connect_args(url)
    return await asyncpg.connect(
        host=target.host,
        port=target.port or 5432,
        user=target.username,
        password=target.password,
        database=target.database,
        **args,
    )


async def verify_app_role(url: URL, progress: Progress | None = None) -> VerifyReport:
    """Connect with `url` (the app role's DSN) and run every check; never changes data."""
    conn = await _connect(url)
    try:
        transaction = conn.transaction()
        await transaction.start()
        try:
            return await _run_checks(conn, progress)
        finally:
            await transaction.rollback()
    finally:
        await conn.close(timeout=5)


async def _run_checks(conn: asyncpg.Connection, progress: Progress | None) -> VerifyReport:
    # A live database: never wait behind the app's locks for long.
    await conn.execute("SET LOCAL lock_timeout = '2s'; SET LOCAL statement_timeout = '15s'")
    report = VerifyReport(role=await conn.fetchval("SELECT current_user"))
    report.server_version = str(await conn.fetchval("SHOW server_version"))
    tables = await conn.fetch(
        """
        SELECT c.oid, c.relname::text AS name, pg_get_userbyid(c.relowner)::text AS owner,
               (SELECT a.attname::text FROM pg_attribute a WHERE a.attrelid = c.oid
                  AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum LIMIT 1) AS col
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') ORDER BY c.relname
        """,
        SCHEMA,
    )
    report.tables = [row["name"] for row in tables]
    total = len(tables) + 1
    for done, row in enumerate(tables):
        if progress is not None:
            progress(f"checking {row['name']}", done, total)
        report.attempts.extend(await _table_checks(conn, row))
    if progress is not None:
        progress("checking schema and role", len(tables), total)
    owners = sorted({row["owner"] for row in tables})
    report.attempts.extend(await _database_checks(conn, owners))
    report.facts = await _facts(conn)
    if progress is not None:
        progress("done", total, total)
    return report


async def _attempt(conn: asyncpg.Connection, sql: str) -> tuple[str, str | None, str]:
    """Run `sql` in a savepoint that is always rolled back: (outcome, sqlstate, message)."""
    savepoint = conn.transaction()
    await savepoint.start()
    try:
        await conn.execute(sql)
    except asyncpg.PostgresError as exc:
        await savepoint.rollback()
        state = exc.sqlstate
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return (REFUSED if state == "42501" else ERROR), state, message
    await savepoint.rollback()
    return ALLOWED, None, ""


def _table_statements(table: str, column: str | None) -> dict[str, str | None]:
    t = f"{quote_ident(SCHEMA)}.{quote_ident(table)}"
    c = quote_ident(column) if column else None
    # Identifiers come quoted from quote_ident (S608 cannot know that).
    return {
        "SELECT": f"SELECT * FROM {t} LIMIT 1",  # noqa: S608
        "INSERT": f"INSERT INTO {t} ({c}) SELECT NULL WHERE false" if c else None,
        "UPDATE": f"UPDATE {t} SET {c} = NULL WHERE false" if c else None,  # noqa: S608
        "DELETE": f"DELETE FROM {t} WHERE false",  # noqa: S608
        "ALTER": f"ALTER TABLE {t} ADD COLUMN {PROBE_NAME} integer",
        "DROP": f"DROP TABLE {t}",
        "TRUNCATE": f"TRUNCATE TABLE {t}",
    }


def _expected(table: str, action: str) -> str:
    if action == "SELECT":
        return ALLOWED
    if action in {"INSERT", "UPDATE", "DELETE"}:
        # Only migrations write the schema revision (see ops.roles).
        return REFUSED if table == VERSION_TABLE else ALLOWED
    return REFUSED


async def _table_checks(conn: asyncpg.Connection, row: asyncpg.Record) -> list[Attempt]:
    name = row["name"]
    attempts = []
    for action, sql in _table_statements(name, row["col"]).items():
        expected = _expected(name, action)
        if sql is None:
            attempts.append(Attempt(name, action, expected, SKIPPED, None, "table has no column"))
            continue
        outcome, state, message = await _attempt(conn, sql)
        attempts.append(Attempt(name, action, expected, outcome, state, message))
    attempts.append(await _table_grant(conn, row["oid"], name))
    return attempts


async def _table_grant(conn: asyncpg.Connection, oid: int, name: str) -> Attempt:
    """GRANT ALL ON the table TO PUBLIC; refused when 42501 or when the ACL did not change."""
    warnings: list[str] = []

    def listen(_conn: object, message: asyncpg.PostgresLogMessage) -> None:
        warnings.append(str(message.sqlstate))

    acl_sql = "SELECT relacl::text FROM pg_class WHERE oid = $1"
    savepoint = conn.transaction()
    await savepoint.start()
    conn.add_log_listener(listen)
    try:
        before = await conn.fetchval(acl_sql, oid)
        await conn.execute(
            f"GRANT ALL ON TABLE {quote_ident(SCHEMA)}.{quote_ident(name)} TO PUBLIC"
        )
        after = await conn.fetchval(acl_sql, oid)
        await asyncio.sleep(0)  # log listeners are called soon, not inline
    except asyncpg.PostgresError as exc:
        outcome = REFUSED if exc.sqlstate == "42501" else ERROR
        return Attempt(name, "GRANT", REFUSED, outcome, exc.sqlstate, str(exc).splitlines()[0])
    finally:
        conn.remove_log_listener(listen)
        await savepoint.rollback()
    if before == after:
        state = warnings[0] if warnings else None
        return Attempt(name, "GRANT", REFUSED, REFUSED, state, "no privileges were granted")
    return Attempt(name, "GRANT", REFUSED, ALLOWED, None, "privileges were granted")


async def _database_checks(conn: asyncpg.Connection, owners: list[str]) -> list[Attempt]:
    where = f"(schema {SCHEMA})"
    statements = [
        (where, "CREATE TABLE", f"CREATE TABLE {quote_ident(SCHEMA)}.{PROBE_NAME} (id integer)"),
        ("(database)", "CREATE SCHEMA", f"CREATE SCHEMA {PROBE_NAME}"),
    ]
    extension = await conn.fetchval(
        "SELECT name FROM pg_available_extensions WHERE installed_version IS NULL "
        "ORDER BY name IN ('pgcrypto', 'citext', 'hstore') DESC, name LIMIT 1"
    )
    statements += [
        (f"(role {owner})", "GRANT ROLE", f"GRANT {quote_ident(owner)} TO CURRENT_USER")
        for owner in owners
    ]
    attempts = []
    for target, action, sql in statements:
        outcome, state, message = await _attempt(conn, sql)
        attempts.append(Attempt(target, action, REFUSED, outcome, state, message))
    if extension is None:
        attempts.append(
            Attempt(
                "(database)",
                "CREATE EXTENSION",
                REFUSED,
                SKIPPED,
                None,
                "no uninstalled extension is available on this server to attempt",
            )
        )
    else:
        sql = f"CREATE EXTENSION {quote_ident(extension)}"
        outcome, state, message = await _attempt(conn, sql)
        attempts.append(
            Attempt(
                f"(extension {extension})", "CREATE EXTENSION", REFUSED, outcome, state, message
            )
        )
    return attempts


async def _facts(conn: asyncpg.Connection) -> list[Fact]:
    row = await conn.fetchrow(
        """
        SELECT r.rolsuper, r.rolcreatedb, r.rolcreaterole, r.rolreplication, r.rolbypassrls,
               (SELECT count(*) FROM pg_shdepend WHERE refclassid = 'pg_authid'::regclass
                  AND refobjid = r.oid AND deptype = 'o') AS owned
        FROM pg_roles r WHERE r.rolname = current_user
        """
    )
    return [
        Fact("superuser", bool(row["rolsuper"]), False),
        Fact("createdb", bool(row["rolcreatedb"]), False),
        Fact("createrole", bool(row["rolcreaterole"]), False),
        Fact("replication", bool(row["rolreplication"]), False),
        Fact("bypassrls", bool(row["rolbypassrls"]), False),
        Fact("owned objects", int(row["owned"]), 0),
    ]
