"""Shared fixtures: both engines, a real PostgreSQL the suite controls, env isolation, and the
suite-wide secret scan.

PostgreSQL under test comes from AUTHKEEP_TEST_DATABASE_URL when set; otherwise the suite starts
a throwaway server itself (`tests/support/pgcluster.py`). Tests that must stop the server or
fail a password always use a throwaway server of their own.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from authkeep.app import create_app
from authkeep.config import Settings, load_settings
from support.apps import PostgresTemplates, SqliteTemplates
from support.pgcluster import ThrowawayPostgres
from support.redis import RedisDatabases, ThrowawayRedis
from support.secrets_scan import FIGURES, SCAN, ScanHandler

# A password with every character that breaks naive DSN handling (SPEC §4).
PG_PASSWORD = SCAN.register("ak-Pg@ss/w%rd:9x!")
ENV_PREFIXES = ("AUTHKEEP_", "DATABASE_URL", "AUTH_DATABASE_URI", "FLY_", "TRUSTED_ORIGINS")


def pytest_configure(config: pytest.Config) -> None:
    logging.getLogger().addHandler(ScanHandler(SCAN))
    logging.getLogger().setLevel(logging.DEBUG)
    for noisy in ("httpcore", "asyncio", "hpack", "aiosqlite"):
        logging.getLogger(noisy).setLevel(logging.INFO)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for figure in FIGURES:
        terminalreporter.write_line(f"figure: {figure}")
    hits = SCAN.hits()
    terminalreporter.write_line(
        f"secret scan: {len(SCAN.texts)} log records and outputs scanned for "
        f"{len(SCAN.secrets)} secrets: {len(hits)} hits"
    )
    for where, secret in hits[:20]:
        terminalreporter.write_line(f"  secret found in {where}: {secret[:3]}…")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if SCAN.hits() and exitstatus == 0:
        session.exitstatus = 1


POSTGRES_FIXTURES = {"postgres_url", "postgres_admin_url", "pg_cluster", "postgres_templates"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that touches PostgreSQL, so `-m postgres` runs the PostgreSQL half."""
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        callspec = getattr(item, "callspec", None)
        params = callspec.params if callspec else {}
        engine = params.get("database_url") or params.get("migrated_url")
        if engine == "postgresql" or (engine is None and names & POSTGRES_FIXTURES):
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Each test starts with no authkeep/database variables and its own working directory."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIXES):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def pg_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThrowawayPostgres]:
    """A throwaway PostgreSQL with scram passwords that this suite owns."""
    server = ThrowawayPostgres(tmp_path_factory.mktemp("pg"), password=PG_PASSWORD)
    server.start()
    yield server
    server.cleanup()


@pytest.fixture(scope="session")
def postgres_admin_url(request: pytest.FixtureRequest) -> str:
    """A URL with rights to create databases on the PostgreSQL under test."""
    given = os.environ.get("AUTHKEEP_TEST_DATABASE_URL", "").strip()
    if given:
        return given
    cluster: ThrowawayPostgres = request.getfixturevalue("pg_cluster")
    return cluster.admin_url


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def create_database(admin_url: str) -> str:
    name = f"ak_{secrets.token_hex(6)}"
    conn = await asyncpg.connect(with_database(admin_url, "postgres"))
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return with_database(admin_url, name)


async def drop_database(admin_url: str, url: str) -> None:
    name = urlsplit(url).path.lstrip("/")
    conn = await asyncpg.connect(with_database(admin_url, "postgres"))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture
async def postgres_url(postgres_admin_url: str) -> AsyncIterator[str]:
    """A fresh, empty database on the PostgreSQL under test, dropped afterwards."""
    url = await create_database(postgres_admin_url)
    yield url
    await drop_database(postgres_admin_url, url)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'authkeep-test.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    """A fresh, empty database on each engine in turn."""
    fixture = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    url: str = request.getfixturevalue(fixture)
    return url


@pytest.fixture(scope="session")
def postgres_templates(postgres_admin_url: str) -> Iterator[PostgresTemplates]:
    templates = PostgresTemplates(postgres_admin_url)
    yield templates
    asyncio.run(templates.close())


@pytest.fixture(scope="session")
def sqlite_templates(tmp_path_factory: pytest.TempPathFactory) -> SqliteTemplates:
    return SqliteTemplates(tmp_path_factory.mktemp("sqlite-templates"))


@pytest.fixture(params=["sqlite", "postgresql"])
async def migrated_url(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """A fresh database at migration head, on each engine in turn."""
    if request.param == "sqlite":
        yield await request.getfixturevalue("sqlite_templates").fresh()
        return
    templates: PostgresTemplates = request.getfixturevalue("postgres_templates")
    url = await templates.fresh()
    yield url
    await templates.drop(url)


@pytest.fixture
async def app(migrated_url: str, make_settings) -> AsyncIterator[FastAPI]:
    """The whole app, started, on a fresh migrated database of each engine."""
    application = create_app(make_settings(database_url=migrated_url))
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for `app`, talking ASGI in process (client IP 127.0.0.1)."""
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


@pytest.fixture
def make_settings(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Settings for a test, built from keyword overrides (env names not needed)."""

    def build(**overrides: object) -> Settings:
        overrides.setdefault("data_dir", tmp_path / "data")
        overrides.setdefault("db_probe_timeout", 2.0)
        # Many tests make hundreds of calls from one client; the own-API limits have their own
        # tests (tests/core/test_apilimits.py), which pass the real values explicitly.
        overrides.setdefault("api_limit_per_ip", 10_000)
        overrides.setdefault("api_limit_per_owner", 10_000)
        overrides.setdefault("api_limit_per_key", 10_000)
        # Many tests make dozens of failures on one account (enumeration trials, FI-RACE-03's
        # 200 concurrent guesses, the 101 of CHK-BF-01): no progressive waits for them. The
        # delay tests (tests/users/test_sign_in_delays.py) pass the real schedule explicitly.
        overrides.setdefault("login_delay_base_seconds", 0.0)
        return load_settings(**overrides)

    return build


@pytest.fixture(scope="session")
def redis_databases(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisDatabases]:
    """The Redis under test: AUTHKEEP_TEST_REDIS_URL, else a throwaway redis-server."""
    given = os.environ.get("AUTHKEEP_TEST_REDIS_URL", "").strip()
    if given:
        yield RedisDatabases(given)
        return
    server = ThrowawayRedis(tmp_path_factory.mktemp("redis"))
    server.start()
    yield RedisDatabases(server.url)
    server.stop()


@pytest.fixture
def redis_url(redis_databases: RedisDatabases) -> str:
    """A Redis database of this test's own, empty at the start."""
    return redis_databases.fresh()


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def blackhole_port() -> Iterator[int]:
    """A loopback port that accepts TCP connections and never says a word."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept_forever() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept_forever, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    listener.close()
