"""Two database roles (seed 002; SPEC §8 `db roles`; RELIABILITY CHK-OP-01, OPS-05).

The migration role (`DATABASE_URL_ADMIN`) owns the schema and runs `authkeep db migrate`. The app
role the server connects as may read and write rows and nothing else: CONNECT, USAGE on schema
`public`, SELECT/INSERT/UPDATE/DELETE on its tables (SELECT only on `alembic_version`), USAGE and
SELECT on sequences, and default privileges so tables a later migration creates are reachable.
It owns nothing, is not superuser, cannot create roles or databases, and cannot CREATE in the
schema: on PostgreSQL < 15, where PUBLIC may create in `public`, that right is revoked from
PUBLIC (PostgreSQL 15's own default). Passwords travel as SCRAM verifiers (`ops.scram`), never in
clear in a statement. Identifiers are quoted here; values are bound parameters.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from authkeep.core.migrate import VERSION_TABLE
from authkeep.errors import AuthkeepError, ConfigError
from authkeep.ops import scram
from authkeep.ops.role_inputs import (
    RoleUsageError,
    quote_ident,
    quote_literal,
    validate_password,
    validate_role_name,
)

logger = logging.getLogger("authkeep.ops.roles")

SCHEMA = "public"
ROLE_FIX = (
    "Run `authkeep db roles` with DATABASE_URL_ADMIN set to the migration role, then point "
    "DATABASE_URL at the app role it creates (see `authkeep db roles --help`)."
)
# Attribute → the keyword that makes it safe; only differing ones are ever sent.
_SAFE_ATTRIBUTES = {
    "rolsuper": (False, "NOSUPERUSER"),
    "rolcreatedb": (False, "NOCREATEDB"),
    "rolcreaterole": (False, "NOCREATEROLE"),
    "rolreplication": (False, "NOREPLICATION"),
    "rolbypassrls": (False, "NOBYPASSRLS"),
    "rolcanlogin": (True, "LOGIN"),
}


class RoleSetupError(AuthkeepError):
    """The database refused a role or grant change, or the app role is not safe."""

    code = "role_setup_failed"


class UnsafeDatabaseRole(ConfigError):
    """Production refuses to serve as a superuser, a table owner or a role that can do DDL."""

    code = "unsafe_database_role"


def _require_postgres(engine: AsyncEngine) -> None:
    if engine.dialect.name != "postgresql":
        raise RoleUsageError(
            "Database roles are a PostgreSQL feature; SQLite has none. Nothing to do."
        )


# -- what a role may do: one line per privilege, so two snapshots diff into changes ----------

_SNAPSHOT = text(
    """
    WITH r AS (SELECT oid FROM pg_roles WHERE rolname = :role)
    SELECT 'database ' || d.datname || ': ' || a.privilege_type
           || CASE WHEN a.grantee = 0 THEN ' (PUBLIC)' ELSE '' END
    FROM pg_database d, aclexplode(COALESCE(d.datacl, acldefault('d', d.datdba))) a
    WHERE d.datname = current_database() AND a.grantee IN (0, (SELECT oid FROM r))
    UNION ALL
    SELECT 'schema ' || n.nspname || ': ' || a.privilege_type
           || CASE WHEN a.grantee = 0 THEN ' (PUBLIC)' ELSE '' END
    FROM pg_namespace n, aclexplode(COALESCE(n.nspacl, acldefault('n', n.nspowner))) a
    WHERE n.nspname = :schema AND a.grantee IN (0, (SELECT oid FROM r))
    UNION ALL
    SELECT CASE WHEN c.relkind = 'S' THEN 'sequence ' ELSE 'table ' END
           || c.relname || ': ' || a.privilege_type
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace,
         aclexplode(COALESCE(c.relacl, acldefault(
             CASE WHEN c.relkind = 'S' THEN 's' ELSE 'r' END::"char", c.relowner))) a
    WHERE n.nspname = :schema AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
      AND a.grantee = (SELECT oid FROM r)
    UNION ALL
    SELECT 'default for new '
           || CASE d.defaclobjtype WHEN 'r' THEN 'tables' WHEN 'S' THEN 'sequences'
                                   ELSE d.defaclobjtype::text END
           || ' of ' || pg_get_userbyid(d.defaclrole) || ': ' || a.privilege_type
    FROM pg_default_acl d JOIN pg_namespace n ON n.oid = d.defaclnamespace,
         aclexplode(d.defaclacl) a
    WHERE n.nspname = :schema AND a.grantee = (SELECT oid FROM r)
    """
)


async def privileges(conn: AsyncConnection, role: str) -> set[str]:
    """Every privilege `role` (or PUBLIC, on the database and schema) holds, one line each."""
    rows = await conn.execute(_SNAPSHOT, {"role": role, "schema": SCHEMA})
    return {str(row[0]) for row in rows}


@dataclass
class GrantReport:
    """What `apply_grants` changed; `applied` is false when there was nothing to grant to."""

    role: str
    applied: bool
    reason: str = ""
    granted: list[str] = field(default_factory=list)
    revoked: list[str] = field(default_factory=list)

    @property
    def changes(self) -> int:
        return len(self.granted) + len(self.revoked)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "changes": self.changes}


def _grant_statements(role: str, database: str, version_table: bool) -> list[str]:
    q, s, d = quote_ident(role), quote_ident(SCHEMA), quote_ident(database)
    dml = "SELECT, INSERT, UPDATE, DELETE"
    statements = [
        f"GRANT CONNECT ON DATABASE {d} TO {q}",
        f"REVOKE CREATE ON DATABASE {d} FROM {q}",
        f"GRANT USAGE ON SCHEMA {s} TO {q}",
        f"REVOKE CREATE ON SCHEMA {s} FROM {q}",
        # PostgreSQL < 15 lets PUBLIC create in `public`; 15+ already does this by default.
        f"REVOKE CREATE ON SCHEMA {s} FROM PUBLIC",
        # Revoke-then-grant removes extras (TRUNCATE, TRIGGER…) an older setup may have given.
        f"REVOKE ALL ON ALL TABLES IN SCHEMA {s} FROM {q}",
        f"GRANT {dml} ON ALL TABLES IN SCHEMA {s} TO {q}",
        f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA {s} FROM {q}",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {s} TO {q}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA {s} REVOKE ALL ON TABLES FROM {q}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA {s} GRANT {dml} ON TABLES TO {q}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA {s} REVOKE ALL ON SEQUENCES FROM {q}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA {s} GRANT USAGE, SELECT ON SEQUENCES TO {q}",
    ]
    if version_table:
        # The app reads the schema revision at start-up; only migrations may write it.
        statements.append(
            f"REVOKE INSERT, UPDATE, DELETE ON TABLE {s}.{quote_ident(VERSION_TABLE)} FROM {q}"
        )
    return statements


async def _grant(conn: AsyncConnection, role: str) -> GrantReport:
    before = await privileges(conn, role)
    database = str(await conn.scalar(text("SELECT current_database()")))
    version_table = await conn.scalar(
        text("SELECT to_regclass(:name) IS NOT NULL"),
        {"name": f"{quote_ident(SCHEMA)}.{quote_ident(VERSION_TABLE)}"},
    )
    for statement in _grant_statements(role, database, bool(version_table)):
        await conn.exec_driver_sql(statement)
    after = await privileges(conn, role)
    return GrantReport(role, True, granted=sorted(after - before), revoked=sorted(before - after))


async def _role_row(conn: AsyncConnection, role: str) -> dict[str, Any] | None:
    row = await conn.execute(
        text(
            "SELECT oid, rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls, "
            "rolcanlogin FROM pg_roles WHERE rolname = :role"
        ),
        {"role": role},
    )
    found = row.mappings().first()
    return dict(found) if found is not None else None


def _refused(exc: DBAPIError, what: str) -> RoleSetupError:
    """The driver's text can quote the statement (and so a verifier): keep only the SQLSTATE."""
    sqlstate = getattr(exc.orig, "sqlstate", None) or "unknown"
    hint = (
        " The admin role lacks the right: use a superuser, or a role with CREATEROLE that "
        "owns the tables (the role that runs `authkeep db migrate`)."
        if sqlstate == "42501"
        else ""
    )
    return RoleSetupError(f"PostgreSQL refused to {what} (SQLSTATE {sqlstate}).{hint}")


async def apply_grants(engine: AsyncEngine, role: str) -> GrantReport:
    """(Re-)apply the app role's grants; run by `db roles` and after every `db migrate`.

    A no-op on SQLite and when the role does not exist (nobody asked for two roles).
    """
    if engine.dialect.name != "postgresql":
        return GrantReport(role, False, "SQLite has no database roles")
    try:
        async with engine.begin() as conn:
            if await _role_row(conn, role) is None:
                return GrantReport(role, False, f"role {role!r} does not exist")
            report = await _grant(conn, role)
    except DBAPIError as exc:
        raise _refused(exc, f"grant the app role {role!r} its privileges") from None
    if report.changes:
        logger.info("Grants for app role %r re-applied: %d change(s)", role, report.changes)
    return report


# -- creating or updating the app role --------------------------------------------------------


@dataclass
class RoleReport:
    """What `ensure_app_role` did. `changes` is 0 on a second run with the same password."""

    role: str
    admin: str
    created: bool = False
    password_changed: bool = False
    password_compared: bool = True
    attributes_changed: list[str] = field(default_factory=list)
    grants: GrantReport | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def changes(self) -> int:
        grants = self.grants.changes if self.grants else 0
        return (
            int(self.created) + int(self.password_changed) + len(self.attributes_changed) + grants
        )

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["grants"] = self.grants.as_dict() if self.grants else None
        return {"ok": not self.problems, **data, "changes": self.changes}


async def ensure_app_role(engine: AsyncEngine, role: str, password: str) -> RoleReport:
    """Create or update the limited app role and its grants, in one transaction.

    Idempotent: the password is compared with the stored verifier when the admin may read it
    (superuser) and only set when it differs; attributes only when unsafe. Problems that need a
    person (the role owns objects, inherits an owner's rights, can still create in the schema)
    are reported, not silently "fixed".
    """
    _require_postgres(engine)
    validate_role_name(role)
    validate_password(password)
    try:
        async with engine.begin() as conn:
            admin = str(await conn.scalar(text("SELECT current_user")))
            if admin == role:
                raise RoleUsageError(
                    f"{role!r} is the role running this command (the admin); the app role must "
                    "be a different one. Pass --role or set AUTHKEEP_DB_APP_ROLE."
                )
            report = RoleReport(role, admin)
            await _create_or_update(conn, report, password)
            report.grants = await _grant(conn, role)
            report.problems = await _problems(conn, role, admin)
    except DBAPIError as exc:
        raise _refused(exc, f"create or update the role {role!r}") from None
    return report


async def _create_or_update(conn: AsyncConnection, report: RoleReport, password: str) -> None:
    q = quote_ident(report.role)
    row = await _role_row(conn, report.role)
    if row is None:
        safe = " ".join(keyword for _, keyword in _SAFE_ATTRIBUTES.values())
        secret = quote_literal(scram.verifier(password))
        await conn.exec_driver_sql(f"CREATE ROLE {q} {safe} INHERIT PASSWORD {secret}")
        report.created = report.password_changed = True
        return
    fixes = [kw for attr, (want, kw) in _SAFE_ATTRIBUTES.items() if bool(row[attr]) is not want]
    if fixes:
        await conn.exec_driver_sql(f"ALTER ROLE {q} {' '.join(fixes)}")
        report.attributes_changed = fixes
    readable = await conn.scalar(text("SELECT has_table_privilege('pg_authid', 'SELECT')"))
    report.password_compared = bool(readable)
    if readable:
        stored = await conn.scalar(
            text("SELECT rolpassword FROM pg_authid WHERE rolname = :role"), {"role": report.role}
        )
        if scram.matches(password, stored):
            return
    await conn.exec_driver_sql(f"ALTER ROLE {q} PASSWORD {quote_literal(scram.verifier(password))}")
    report.password_changed = True


_PROBLEMS = text(
    """
    SELECT
      (SELECT count(*) FROM pg_shdepend
        WHERE refclassid = 'pg_authid'::regclass AND refobjid = r.oid AND deptype = 'o'),
      ARRAY(SELECT DISTINCT pg_get_userbyid(c.relowner)::text
              FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = :schema AND c.relkind IN ('r', 'p') AND c.relowner <> r.oid
               AND pg_has_role(r.oid, c.relowner, 'USAGE')),
      has_schema_privilege(r.oid, :schema, 'CREATE'),
      has_database_privilege(r.oid, current_database(), 'CREATE')
    FROM pg_roles r WHERE r.rolname = :role
    """
)


async def _problems(conn: AsyncConnection, role: str, admin: str) -> list[str]:
    row = (await conn.execute(_PROBLEMS, {"role": role, "schema": SCHEMA})).one()
    owned, owners, create_in_schema, create_in_database = row
    q, a = quote_ident(role), quote_ident(admin)
    problems = []
    if owned:
        problems.append(
            f"{role!r} owns {owned} object(s); an app role must own nothing. Fix: in each "
            f"database, as an admin, run `REASSIGN OWNED BY {q} TO {a};`"
        )
    for owner in owners:
        problems.append(
            f"{role!r} is a member of {owner!r}, which owns tables, so it inherits an owner's "
            f"rights. Fix: `REVOKE {quote_ident(owner)} FROM {q};`"
        )
    if create_in_schema:
        problems.append(
            f"{role!r} can still CREATE in schema {SCHEMA} (this admin could not revoke it). "
            f"Fix: as the schema owner run `REVOKE CREATE ON SCHEMA {SCHEMA} FROM PUBLIC;`"
        )
    if create_in_database:
        problems.append(
            f"{role!r} can CREATE schemas in this database. Fix: as the database owner run "
            "`REVOKE CREATE ON DATABASE <db> FROM PUBLIC;`"
        )
    return problems


# -- the server's own role at start-up (and for `authkeep doctor`) -----------------------------


@dataclass(frozen=True)
class RoleCheck:
    """What the role the server connects as could do beyond reading and writing rows."""

    role: str
    is_superuser: bool
    owns_tables: tuple[str, ...]
    can_create_in_schema: bool
    can_create_roles: bool = False
    can_create_databases: bool = False

    @property
    def problems(self) -> list[str]:
        found = []
        if self.is_superuser:
            found.append("is a superuser")
        if self.owns_tables:
            shown = ", ".join(self.owns_tables[:5]) + (", …" if len(self.owns_tables) > 5 else "")
            found.append(
                f"owns (or inherits ownership of) {len(self.owns_tables)} table(s): {shown}"
            )
        if self.can_create_in_schema:
            found.append(f"can CREATE in schema {SCHEMA}")
        return found

    @property
    def safe(self) -> bool:
        return not self.problems

    @property
    def fix(self) -> str:
        return ROLE_FIX

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "owns_tables": list(self.owns_tables),
            "safe": self.safe,
            "problems": self.problems,
            "fix": None if self.safe else self.fix,
        }


_RUNTIME = text(
    """
    SELECT current_user::text, r.rolsuper, r.rolcreaterole, r.rolcreatedb,
           has_schema_privilege(:schema, 'CREATE'),
           ARRAY(SELECT c.relname::text
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE n.nspname = :schema AND c.relkind IN ('r', 'p')
                    AND (c.relowner = r.oid
                         OR (NOT r.rolsuper AND pg_has_role(c.relowner, 'USAGE')))
                  ORDER BY 1)
    FROM pg_roles r WHERE r.rolname = current_user
    """
)


async def check_runtime_role(engine: AsyncEngine) -> RoleCheck:
    """Inspect the role `engine` connects as (PostgreSQL only). Reused by `authkeep doctor`."""
    _require_postgres(engine)
    async with engine.connect() as conn:
        row = (await conn.execute(_RUNTIME, {"schema": SCHEMA})).one()
    role, superuser, create_role, create_db, create_in_schema, owned = row
    return RoleCheck(
        role=role,
        is_superuser=bool(superuser),
        owns_tables=tuple(owned),
        can_create_in_schema=bool(create_in_schema),
        can_create_roles=bool(create_role),
        can_create_databases=bool(create_db),
    )


async def enforce_runtime_role(engine: AsyncEngine, *, production: bool) -> RoleCheck:
    """Production refuses an unsafe role (`unsafe_database_role`, naming the fix); development
    only warns, so `make run` against a local superuser still works."""
    check = await check_runtime_role(engine)
    if check.safe:
        return check
    message = (
        f"The server connects to PostgreSQL as {check.role!r}, which "
        f"{'; '.join(check.problems)}. Serving with more than row access is refused in "
        f"production (CHK-OP-01). {ROLE_FIX}"
    )
    if production:
        raise UnsafeDatabaseRole(message)
    logger.warning("%s Allowed because this is development.", message)
    return check
