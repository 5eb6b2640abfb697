"""What `db roles` takes from the operator, made safe for PostgreSQL: the role's name, its
password and its DSN, and the quoting of identifiers and literals (values are always bound
parameters; only role, schema and table names are spliced in, quoted here).
"""

from __future__ import annotations

from urllib.parse import quote

from sqlalchemy.engine import URL

from authkeep.errors import AuthkeepError

PASSWORD_ENV = "AUTHKEEP_DB_APP_PASSWORD"  # noqa: S105 (a variable name)
MIN_PASSWORD_LENGTH = 16
MAX_IDENTIFIER_BYTES = 63  # NAMEDATALEN - 1: PostgreSQL silently truncates longer names


class RoleUsageError(AuthkeepError):
    """Refused before anything ran: a bad role name or password, or not PostgreSQL (exit 2)."""

    code = "invalid_usage"
    status_code = 400


def quote_ident(name: str) -> str:
    """A PostgreSQL identifier, always quoted (so case, spaces and quotes survive)."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """An escape-string literal: correct whatever `standard_conforming_strings` says."""
    return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def validate_role_name(name: str) -> str:
    """Refuse names PostgreSQL would reject or silently change."""
    if not name or "\x00" in name:
        raise RoleUsageError("The role name must be non-empty and contain no NUL character.")
    if len(name.encode()) > MAX_IDENTIFIER_BYTES:
        raise RoleUsageError(
            f"The role name is longer than {MAX_IDENTIFIER_BYTES} bytes; PostgreSQL would "
            "silently truncate it. Choose a shorter name."
        )
    if name.startswith("pg_") or name.lower() in {"public", "none", "current_user", "session_user"}:
        raise RoleUsageError(f"'{name}' is reserved by PostgreSQL; choose another role name.")
    return name


def validate_password(password: str) -> str:
    if "\x00" in password:
        raise RoleUsageError("The app role password cannot contain a NUL character.")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise RoleUsageError(
            f"The app role password needs at least {MIN_PASSWORD_LENGTH} characters; generate "
            "one with `openssl rand -base64 32`."
        )
    return password


def app_role_url(admin: URL, role: str, password: str) -> URL:
    """The app role's DSN: the admin DSN with user and password swapped.

    Rendered, the password is URL-encoded (`@ / % :` survive, SPEC §4); connecting from the URL
    object passes it to the driver as is.
    """
    return admin.set(username=role, password=password)


def database_url_hint(admin: URL, role: str) -> str:
    """What to put in DATABASE_URL, with a placeholder where the password goes."""
    where = URL.create(
        "postgresql", host=admin.host, port=admin.port, database=admin.database, query=admin.query
    ).render_as_string()
    scheme, rest = where.split("://", 1)
    return f"{scheme}://{quote(role, safe='')}:<url-encoded password>@{rest}"
