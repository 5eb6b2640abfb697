"""Choosing the database at start-up: probe the fallback chain, pick the first that answers.

The choice is made before the engine exists, and the engine is built from it (SPEC §4). Strict
mode exits listing each candidate's failure; non-strict falls back with a warning that names why;
production with no DSN at all is an error, never a silent SQLite file.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import socket
import ssl
import time
from dataclasses import dataclass, field

import asyncpg

from authkeep.config import Settings
from authkeep.core.db import asyncpg_connect_args
from authkeep.core.dsn import Candidate, candidates, default_sqlite
from authkeep.errors import DatabaseBootstrapError

logger = logging.getLogger("authkeep.db")


class ProbeFailure(enum.StrEnum):
    REFUSED = "refused"
    TIMEOUT = "timeout"
    AUTH_FAILED = "auth_failed"
    DATABASE_MISSING = "database_missing"
    HOST_UNKNOWN = "host_unknown"
    TLS = "tls"
    ERROR = "error"


@dataclass
class ProbeResult:
    """What one real connection attempt found."""

    candidate: Candidate
    ok: bool
    elapsed_ms: float
    failure: ProbeFailure | None = None
    message: str = ""
    server_version: str | None = None
    tls: bool | None = None

    @property
    def fix(self) -> str:
        return fix_for(self)

    def as_dict(self) -> dict[str, object]:
        return {
            "source": self.candidate.source,
            "dsn": self.candidate.display,
            "rewritten_to_local_proxy": self.candidate.rewritten,
            "ok": self.ok,
            "elapsed_ms": round(self.elapsed_ms, 1),
            "failure": self.failure.value if self.failure else None,
            "message": self.message,
            "fix": self.fix if not self.ok else None,
            "server_version": self.server_version,
            "tls": self.tls,
        }


@dataclass
class Selection:
    """The bootstrap's answer: the DSN to use, why, and every probe that led there."""

    candidate: Candidate
    probes: list[ProbeResult] = field(default_factory=list)
    reachable: bool = True
    reason: str = ""


def fix_for(result: ProbeResult) -> str:
    """One line a person can act on, per failure kind."""
    url = result.candidate.url
    where = f"{url.host or 'localhost'}:{url.port or 5432}"
    var = result.candidate.source
    match result.failure:
        case ProbeFailure.REFUSED:
            return (
                f"Nothing accepts connections on {where}: start PostgreSQL there, or for a Fly "
                f"database open a tunnel with `fly proxy {url.port or 5432} -a <db-app>`."
            )
        case ProbeFailure.TIMEOUT:
            return (
                f"{where} did not answer in time: check firewall, VPN or WireGuard, or raise "
                "AUTHKEEP_DB_PROBE_TIMEOUT."
            )
        case ProbeFailure.AUTH_FAILED:
            return (
                f"The server rejected user '{url.username}': check the user and password in "
                f"{var} (URL-encode @ / % : in the password)."
            )
        case ProbeFailure.DATABASE_MISSING:
            return (
                f"Database '{url.database}' does not exist: create it with "
                f"`createdb -h {url.host} -p {url.port or 5432} -U <admin> {url.database}`."
            )
        case ProbeFailure.HOST_UNKNOWN:
            return (
                f"Host '{url.host}' does not resolve: check the hostname in {var}; .internal "
                "names only resolve inside Fly's private network."
            )
        case ProbeFailure.TLS:
            return f"TLS negotiation failed: check sslmode in {var} against the server's TLS setup."
        case _:
            return f"Check {var}; run `authkeep db check` for details."


def _classify(exc: BaseException) -> tuple[ProbeFailure, str]:
    if isinstance(exc, TimeoutError):
        return ProbeFailure.TIMEOUT, "no answer within the probe timeout"
    if isinstance(exc, socket.gaierror):
        return ProbeFailure.HOST_UNKNOWN, "host name does not resolve"
    if isinstance(exc, ConnectionRefusedError):
        return ProbeFailure.REFUSED, "connection refused"
    if isinstance(exc, ssl.SSLError):
        return ProbeFailure.TLS, "TLS negotiation failed"
    if isinstance(
        exc, asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError
    ):
        return ProbeFailure.AUTH_FAILED, "authentication failed"
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return ProbeFailure.DATABASE_MISSING, "database does not exist"
    if isinstance(exc, ConnectionError) and "SSL" in str(exc):
        return ProbeFailure.TLS, "the server refused TLS"
    if isinstance(exc, OSError):
        # Connect errors on several addresses arrive as one OSError naming each attempt.
        if "refused" in str(exc).lower() or "Connect call failed" in str(exc):
            return ProbeFailure.REFUSED, "connection refused"
        return ProbeFailure.ERROR, f"network error ({type(exc).__name__})"
    return ProbeFailure.ERROR, f"{type(exc).__name__}"


async def probe(candidate: Candidate, within: float) -> ProbeResult:
    """One real connection within `within` seconds, then the server version; never raises."""
    started = time.perf_counter()
    if candidate.is_sqlite:
        return await _probe_sqlite(candidate, started)
    url, args = asyncpg_connect_args(candidate.url)
    args["timeout"] = min(float(args.get("timeout", within)), within)
    try:
        async with asyncio.timeout(within):
            conn = await asyncpg.connect(
                host=url.host,
                port=url.port or 5432,
                user=url.username,
                password=url.password,
                database=url.database,
                **args,
            )
            try:
                version = await conn.fetchval("SHOW server_version")
                tls = await conn.fetchval(
                    "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
                )
            finally:
                await conn.close(timeout=2)
    except Exception as exc:
        failure, message = _classify(exc)
        return ProbeResult(candidate, False, _ms(started), failure, message)
    return ProbeResult(candidate, True, _ms(started), server_version=str(version), tls=bool(tls))


async def _probe_sqlite(candidate: Candidate, started: float) -> ProbeResult:
    import aiosqlite

    path = candidate.url.database or ":memory:"
    try:
        if path != ":memory:":
            from pathlib import Path

            Path(path).parent.mkdir(parents=True, exist_ok=True)
        async with aiosqlite.connect(path) as conn:
            row = await (await conn.execute("SELECT sqlite_version()")).fetchone()
    except Exception as exc:
        return ProbeResult(
            candidate,
            False,
            _ms(started),
            ProbeFailure.ERROR,
            f"cannot open the SQLite file ({type(exc).__name__})",
        )
    return ProbeResult(
        candidate, True, _ms(started), server_version=str(row[0]) if row else None, tls=None
    )


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


async def probe_all(settings: Settings) -> list[ProbeResult]:
    """Probe every configured candidate (for `db check`), in chain order."""
    return [await probe(c, settings.db_probe_timeout) for c in candidates(settings)]


async def select_database(settings: Settings) -> Selection:
    """Walk the fallback chain and return the first candidate that answers (see module doc)."""
    chain = candidates(settings)
    if not chain:
        if settings.is_production:
            raise DatabaseBootstrapError(
                "No database configured. Set AUTH_DATABASE_URI or DATABASE_URL: in production "
                "authkeep never falls back to a SQLite file."
            )
        chain = [default_sqlite(settings.data_dir)]

    probes: list[ProbeResult] = []
    for candidate in chain:
        result = await probe(candidate, settings.db_probe_timeout)
        probes.append(result)
        if result.ok:
            _log_selected(candidate)
            return Selection(candidate, probes)

    summary = "; ".join(
        f"{p.candidate.source} ({p.candidate.display}): {p.message}" for p in probes
    )
    if settings.strict_bootstrap:
        raise DatabaseBootstrapError(
            f"No database candidate answered (strict bootstrap): {summary}. "
            + " ".join(p.fix for p in probes)
        )
    fallback = next(
        (c for c in chain if c.source in {"AUTH_DATABASE_URI", "DATABASE_URL"}), chain[0]
    )
    logger.warning(
        "No database candidate answered; using %s (%s) anyway because strict bootstrap is off. "
        "Requests needing the database will get 503 until it answers. Probes: %s",
        fallback.display,
        fallback.source,
        summary,
    )
    _log_selected(fallback)
    return Selection(fallback, probes, reachable=False, reason=summary)


def _log_selected(candidate: Candidate) -> None:
    note = ", Fly private host rewritten to the local proxy" if candidate.rewritten else ""
    logger.info("Database DSN selected: %s (%s%s)", candidate.display, candidate.source, note)


async def select_admin_database(settings: Settings) -> Selection:
    """The DSN for schema work: `DATABASE_URL_ADMIN` when set (seed 002), else the app's chain.

    Unlike serving, schema work never proceeds against a database that did not answer.
    """
    from authkeep.core.dsn import admin_url

    admin = admin_url(settings)
    if admin is None:
        selection = await select_database(settings)
        if not selection.reachable:
            raise DatabaseBootstrapError(
                f"No database answered: {selection.reason}. "
                + " ".join(p.fix for p in selection.probes)
            )
        return selection
    result = await probe(admin, settings.db_probe_timeout)
    if not result.ok:
        raise DatabaseBootstrapError(
            f"DATABASE_URL_ADMIN ({admin.display}): {result.message}. {result.fix}"
        )
    _log_selected(admin)
    return Selection(admin, [result])
