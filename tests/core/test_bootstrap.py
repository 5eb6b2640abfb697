"""The DSN fallback chain against real servers (SPEC §4, RELIABILITY FI-DB-14).

A live PostgreSQL, a closed port, a port that accepts and never answers, a wrong password and a
missing database: each is a real connection attempt, never a mock.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from authkeep.app import open_database
from authkeep.core import migrate
from authkeep.core.bootstrap import ProbeFailure, probe, select_admin_database, select_database
from authkeep.core.db import Database
from authkeep.core.dsn import candidates
from authkeep.errors import DatabaseBootstrapError
from support.pgcluster import ThrowawayPostgres


def pg_url(cluster: ThrowawayPostgres, *, port: int | None = None, **kw: str) -> str:
    url = cluster.url(kw.get("database"), password=kw.get("password"))
    return url if port is None else url.replace(f":{cluster.port}/", f":{port}/")


async def test_live_postgres_answers_with_version_and_tls_state(pg_cluster, make_settings):
    [candidate] = candidates(make_settings(database_url=pg_url(pg_cluster)))
    result = await probe(candidate, 2.0)
    assert result.ok
    assert result.server_version
    assert result.server_version.startswith(pg_cluster.version)
    assert result.tls is False


async def test_closed_port_is_refused_fast(pg_cluster, closed_port, make_settings):
    [candidate] = candidates(make_settings(database_url=pg_url(pg_cluster, port=closed_port)))
    result = await probe(candidate, 2.0)
    assert (result.ok, result.failure) == (False, ProbeFailure.REFUSED)
    assert result.elapsed_ms < 1000
    assert "start PostgreSQL" in result.fix


async def test_silent_port_times_out_within_the_probe_timeout(
    pg_cluster, blackhole_port, make_settings
):
    [candidate] = candidates(make_settings(database_url=pg_url(pg_cluster, port=blackhole_port)))
    started = time.perf_counter()
    result = await probe(candidate, 0.5)
    assert (result.ok, result.failure) == (False, ProbeFailure.TIMEOUT)
    assert time.perf_counter() - started < 1.5
    assert "AUTHKEEP_DB_PROBE_TIMEOUT" in result.fix


async def test_wrong_password_is_an_auth_failure(pg_cluster, make_settings):
    url = pg_url(pg_cluster, password="not-the-password")
    [candidate] = candidates(make_settings(database_url=url))
    result = await probe(candidate, 2.0)
    assert (result.ok, result.failure) == (False, ProbeFailure.AUTH_FAILED)
    assert "DATABASE_URL" in result.fix


async def test_missing_database_is_named_with_the_createdb_fix(pg_cluster, make_settings):
    [candidate] = candidates(make_settings(database_url=pg_url(pg_cluster, database="nope_db")))
    result = await probe(candidate, 2.0)
    assert (result.ok, result.failure) == (False, ProbeFailure.DATABASE_MISSING)
    assert "createdb" in result.fix
    assert "nope_db" in result.fix


async def test_chain_walks_internal_local_url_remote_and_first_answer_wins(
    pg_cluster, closed_port, blackhole_port, make_settings
):
    settings = make_settings(
        database_url_internal=pg_url(pg_cluster, port=closed_port),
        database_url_local=pg_url(pg_cluster, port=blackhole_port),
        database_url=pg_url(pg_cluster),
        database_url_remote=pg_url(pg_cluster, database="never_probed"),
        db_probe_timeout=0.5,
    )
    selection = await select_database(settings)
    assert selection.candidate.source == "DATABASE_URL"
    assert [p.candidate.source for p in selection.probes] == [
        "DATABASE_URL_INTERNAL",
        "DATABASE_URL_LOCAL",
        "DATABASE_URL",
    ]
    assert [p.failure for p in selection.probes[:2]] == [ProbeFailure.REFUSED, ProbeFailure.TIMEOUT]


async def test_duplicate_dsns_are_probed_once(pg_cluster, closed_port, make_settings):
    dead = pg_url(pg_cluster, port=closed_port)
    settings = make_settings(
        database_url_internal=dead,
        database_url_remote=dead,
        database_url=pg_url(pg_cluster, password="wrong"),
        strict_db_bootstrap=True,
    )
    with pytest.raises(DatabaseBootstrapError):
        await select_database(settings)
    assert [c.source for c in candidates(settings)] == ["DATABASE_URL_INTERNAL", "DATABASE_URL"]


async def test_strict_mode_fails_listing_every_candidates_reason(
    pg_cluster, closed_port, blackhole_port, make_settings, tmp_path: Path
):
    settings = make_settings(
        database_url_internal=pg_url(pg_cluster, port=closed_port),
        database_url=pg_url(pg_cluster, port=blackhole_port),
        database_url_remote=pg_url(pg_cluster, password="wrong"),
        strict_db_bootstrap=True,
        db_probe_timeout=0.5,
    )
    with pytest.raises(DatabaseBootstrapError) as failure:
        await select_database(settings)
    detail = failure.value.detail
    for reason in (
        "DATABASE_URL_INTERNAL",
        "connection refused",
        "DATABASE_URL (",
        "no answer",
        "DATABASE_URL_REMOTE",
        "authentication failed",
    ):
        assert reason in detail
    assert not list(tmp_path.rglob("*.db")), "strict failure must not create a SQLite file"


async def test_non_strict_falls_back_with_a_warning_that_names_why(
    pg_cluster, closed_port, make_settings, caplog: pytest.LogCaptureFixture
):
    settings = make_settings(
        database_url_internal=pg_url(pg_cluster, port=closed_port),
        database_url=pg_url(pg_cluster, database="missing_db"),
        strict_db_bootstrap=False,
    )
    with caplog.at_level(logging.WARNING, logger="authkeep.db"):
        selection = await select_database(settings)
    assert selection.reachable is False
    assert selection.candidate.source == "DATABASE_URL"
    warning = next(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "connection refused" in warning
    assert "database does not exist" in warning


async def test_production_without_dsn_refuses_and_creates_no_sqlite_file(
    make_settings, tmp_path: Path
):
    settings = make_settings(env="production", secret_key="x" * 40)
    with pytest.raises(DatabaseBootstrapError, match="never falls back to a SQLite file"):
        await select_database(settings)
    assert not list(tmp_path.rglob("*.db"))


async def test_fly_without_dsn_refuses_too(make_settings):
    with pytest.raises(DatabaseBootstrapError):
        await select_database(make_settings(fly_app_name="my-app"))


async def test_development_default_is_an_explicit_logged_sqlite_file(
    make_settings, caplog: pytest.LogCaptureFixture
):
    settings = make_settings()
    with caplog.at_level(logging.INFO, logger="authkeep.db"):
        selection = await select_database(settings)
    assert selection.candidate.is_sqlite
    assert selection.candidate.url.database == str((settings.data_dir / "authkeep.db").resolve())
    assert any(
        "Database DSN selected: sqlite:///" in r.getMessage()
        and "development default" in r.getMessage()
        for r in caplog.records
    )


async def test_selected_log_line_names_source_and_never_the_password(
    pg_cluster, make_settings, caplog: pytest.LogCaptureFixture
):
    with caplog.at_level(logging.INFO, logger="authkeep.db"):
        await select_database(
            make_settings(
                auth_database_uri=pg_url(pg_cluster), database_url="postgresql://x:y@ignored:1/db"
            )
        )
    [line] = [r.getMessage() for r in caplog.records if "DSN selected" in r.getMessage()]
    assert line == (
        f"Database DSN selected: postgresql://127.0.0.1:{pg_cluster.port}/"
        f"{pg_cluster.database} (AUTH_DATABASE_URI)"
    )


async def test_internal_hostname_reaches_the_local_proxy_off_fly(pg_cluster, make_settings):
    """An `.internal` DSN from Fly works on a laptop through the local proxy (seeds 000, 001)."""
    internal = pg_cluster.url().replace("127.0.0.1", "pandects-pg.internal")
    settings = make_settings(database_url=internal, db_local_proxy=f"127.0.0.1:{pg_cluster.port}")
    selection = await select_database(settings)
    assert selection.reachable
    assert selection.candidate.rewritten
    assert selection.candidate.url.password == pg_cluster.password


async def test_engine_is_built_from_the_winner_and_special_password_works_end_to_end(
    pg_cluster, closed_port, make_settings
):
    """The engine uses the chosen DSN; a password with @ / % : survives to a real query."""
    assert set("@/%:") <= set(pg_cluster.password)
    settings = make_settings(
        database_url_internal=pg_url(pg_cluster, port=closed_port), database_url=pg_url(pg_cluster)
    )
    admin = Database.open((await select_admin_database(settings)).candidate, settings)
    try:
        await migrate.upgrade(admin.engine)
    finally:
        await admin.dispose()
    database = await open_database(settings)
    try:
        assert database.engine.url.port == pg_cluster.port
        assert database.candidate.source == "DATABASE_URL"
        await database.ping(2.0)
    finally:
        await database.dispose()
