"""Database URLs: choosing, normalising, rewriting and displaying them (SPEC §4).

Pure functions only: nothing here opens a connection (see `core.bootstrap` for probes). The
display form never carries a user name or password, and no error raised here quotes the URL.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from authkeep.config import Settings
from authkeep.errors import ConfigError

POSTGRES_DRIVER = "postgresql+asyncpg"
SQLITE_DRIVER = "sqlite+aiosqlite"
_POSTGRES_NAMES = {
    "postgres",
    "postgresql",
    "postgresql+asyncpg",
    "postgresql+psycopg",
    "postgresql+psycopg2",
    "postgres+asyncpg",
}
_SQLITE_NAMES = {"sqlite", "sqlite+aiosqlite", "sqlite+pysqlite"}
_FLY_PRIVATE_SUFFIXES = (".internal", ".flycast")

# The fallback chain of seed 003, with the primary URL (AUTH_DATABASE_URI > DATABASE_URL) third.
CHAIN = ("DATABASE_URL_INTERNAL", "DATABASE_URL_LOCAL", "primary", "DATABASE_URL_REMOTE")


@dataclass(frozen=True)
class Candidate:
    """One DSN the bootstrap may use, with the variable it came from."""

    source: str
    url: URL
    rewritten: bool = False

    @property
    def display(self) -> str:
        return display_url(self.url)

    @property
    def is_sqlite(self) -> bool:
        return is_sqlite(self.url)


def is_sqlite(url: URL) -> bool:
    return url.get_backend_name() == "sqlite"


def normalise(raw: str, source: str, *, connect_timeout: int) -> URL:
    """Parse a DSN, pick the async driver, add `connect_timeout` when absent, keep the rest."""
    if raw.partition("://")[2].count("@") > 1:
        raise ConfigError(
            f"{source} has more than one '@': a password containing @ / % : ? # must be "
            "URL-encoded (e.g. an @ becomes %40)."
        )
    try:
        url = make_url(raw.strip())
    except (ArgumentError, ValueError, TypeError):
        # ValueError: e.g. an unencoded "@" in the password makes the port unparsable; its
        # message quotes the URL, so it is never passed on.
        raise ConfigError(
            f"{source} is not a database URL. Expected postgresql://user:password@host:5432/db "
            "(URL-encode @ / % : in the password) or sqlite:///path/to/file.db."
        ) from None
    name = url.drivername.lower()
    if name in _SQLITE_NAMES:
        return url.set(drivername=SQLITE_DRIVER)
    if name not in _POSTGRES_NAMES:
        raise ConfigError(
            f"{source} uses the scheme '{url.drivername}', which authkeep does not support. "
            "Use postgresql:// (or postgres://) or sqlite:///."
        )
    url = url.set(drivername=POSTGRES_DRIVER)
    if "connect_timeout" not in url.query:
        url = url.update_query_dict({"connect_timeout": str(connect_timeout)})
    return url


def is_fly_private_host(host: str | None) -> bool:
    """True for Fly private-network names. Only the hostname is matched, never the whole URL."""
    if not host:
        return False
    return host.lower().rstrip(".").endswith(_FLY_PRIVATE_SUFFIXES)


def rewrite_for_local_proxy(url: URL, proxy: str) -> URL:
    """Point a `.internal`/`.flycast` URL at the local proxy; credentials, db and query survive."""
    host, port = split_host_port(proxy)
    return url.set(host=host, port=port)


def split_host_port(value: str) -> tuple[str, int]:
    """`localhost:5432` or `[::1]:5432` → (host, port). Port defaults to 5432."""
    value = value.strip()
    if value.count(":") > 1 and not value.startswith("["):
        return value, 5432  # a bare IPv6 address
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port_text = rest.lstrip(":")
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep:
            host, port_text = value, ""
    if not host:
        raise ConfigError("AUTHKEEP_DB_LOCAL_PROXY must look like host:port, e.g. localhost:5432.")
    try:
        port = int(port_text) if port_text else 5432
    except ValueError:
        raise ConfigError("AUTHKEEP_DB_LOCAL_PROXY has a port that is not a number.") from None
    if not 1 <= port <= 65535:
        raise ConfigError("AUTHKEEP_DB_LOCAL_PROXY has a port outside 1-65535.")
    return host, port


def display_url(url: URL) -> str:
    """`<scheme>://<host>:<port>/<db>`: what logs and reports show. Never credentials."""
    scheme = url.get_backend_name()
    if scheme == "sqlite":
        return f"sqlite:///{url.database or ':memory:'}"
    host = url.host or "localhost"
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{url.port or 5432}/{url.database or ''}"


def primary_source(settings: Settings) -> tuple[str, str] | None:
    """The primary DSN and its variable: AUTH_DATABASE_URI wins over DATABASE_URL."""
    if settings.auth_database_uri is not None:
        return "AUTH_DATABASE_URI", settings.auth_database_uri.get_secret_value()
    if settings.database_url is not None:
        return "DATABASE_URL", settings.database_url.get_secret_value()
    return None


def candidates(settings: Settings) -> list[Candidate]:
    """The fallback chain, normalised and rewritten, each distinct URL once, in probe order."""
    raw: list[tuple[str, str]] = []
    for slot in CHAIN:
        if slot == "primary":
            primary = primary_source(settings)
            if primary is not None:
                raw.append(primary)
            continue
        value = getattr(settings, slot.lower())
        if value is not None:
            raw.append((slot, value.get_secret_value()))

    result: list[Candidate] = []
    seen: set[str] = set()
    for source, text in raw:
        url = normalise(text, source, connect_timeout=settings.db_connect_timeout)
        rewritten = False
        if settings.db_rewrite_internal and not settings.on_fly and is_fly_private_host(url.host):
            url = rewrite_for_local_proxy(url, settings.db_local_proxy)
            rewritten = True
        # The default port made explicit, so "host" and "host:5432" count as the same database.
        key = url.set(port=url.port or 5432).render_as_string(hide_password=False)
        if key in seen:
            continue
        seen.add(key)
        result.append(Candidate(source=source, url=url, rewritten=rewritten))
    return result


def default_sqlite(data_dir: Path) -> Candidate:
    """The development default: an explicit, logged SQLite file in the data dir."""
    path = (data_dir / "authkeep.db").resolve()
    return Candidate(
        source="AUTHKEEP_DATA_DIR (development default)",
        url=URL.create(SQLITE_DRIVER, database=str(path)),
    )


def admin_url(settings: Settings) -> Candidate | None:
    """`DATABASE_URL_ADMIN` (seed 002): the DSN migrations and role management use, if set."""
    if settings.database_url_admin is None:
        return None
    url = normalise(
        settings.database_url_admin.get_secret_value(),
        "DATABASE_URL_ADMIN",
        connect_timeout=settings.db_connect_timeout,
    )
    if settings.db_rewrite_internal and not settings.on_fly and is_fly_private_host(url.host):
        return Candidate(
            "DATABASE_URL_ADMIN",
            rewrite_for_local_proxy(url, settings.db_local_proxy),
            rewritten=True,
        )
    return Candidate("DATABASE_URL_ADMIN", url)
