"""`authkeep deploy check URL` against real servers: healthy, closed port, database down
(OPS-04)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from authkeep import __version__
from authkeep.cli import app
from support.pgcluster import ThrowawayPostgres
from support.secrets_scan import FIGURES, SCAN
from support.server import ServerProcess

runner = CliRunner()


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    result = runner.invoke(app, list(args), env=env)
    SCAN.record(f"cli:{' '.join(args)}", result.output)
    return result


@pytest.fixture
def sqlite_server(tmp_path: Path, sqlite_url: str) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path, {"DATABASE_URL": sqlite_url}) as server:
        yield server


def test_healthy_server_passes_every_check(sqlite_server: ServerProcess) -> None:
    result = invoke("deploy", "check", sqlite_server.url)
    assert result.exit_code == 0, result.output
    assert "All checks passed" in result.output
    report = json.loads(invoke("deploy", "check", sqlite_server.url, "--json").stdout)
    assert report["ok"] is True
    assert report["version"] == __version__
    assert [c["name"] for c in report["checks"]] == ["health", "health_db", "version"]
    assert all(c["ok"] and c["status"] == 200 for c in report["checks"])


def test_expected_version_must_match(sqlite_server: ServerProcess) -> None:
    good = invoke("deploy", "check", sqlite_server.url, "--expect-version", __version__)
    assert good.exit_code == 0, good.output
    bad = invoke("deploy", "check", sqlite_server.url, "--expect-version", "99.0.0", "--json")
    assert bad.exit_code == 1
    body = json.loads(bad.stdout)
    assert body["error"] == "check_failed"
    assert f"running {__version__}, expected 99.0.0" in body["detail"]
    assert "/api/version" in body["detail"]


def test_closed_port_fails_every_check_with_its_reason(closed_port: int) -> None:
    url = f"http://127.0.0.1:{closed_port}"
    result = invoke("deploy", "check", url, "--json", "--timeout", "2")
    assert result.exit_code == 1
    body = json.loads(result.stdout)
    assert body["ok"] is False
    assert [c["ok"] for c in body["checks"]] == [False, False, False]
    for check in body["checks"]:
        assert "connection refused" in check["detail"]
    text = invoke("deploy", "check", url, "--timeout", "2")
    assert text.exit_code == 1
    assert "/health: connection refused" in text.output


def test_silent_port_times_out_within_the_timeout(blackhole_port: int) -> None:
    started = time.monotonic()
    result = invoke("deploy", "check", f"http://127.0.0.1:{blackhole_port}", "--timeout", "1")
    elapsed = time.monotonic() - started
    assert result.exit_code == 1
    assert "no answer within the timeout" in result.output
    FIGURES.append(f"OPS-04 deploy check against a silent port: exit 1 after {elapsed:.1f} s")
    assert elapsed < 10


@pytest.mark.parametrize("url", ["ftp://127.0.0.1", "127.0.0.1:8080", "http://"])
def test_a_url_that_is_not_http_is_a_usage_error(url: str) -> None:
    result = invoke("deploy", "check", url)
    assert result.exit_code == 2
    assert "invalid_url" in result.output


def test_wait_retries_until_a_starting_server_answers(tmp_path: Path, sqlite_url: str) -> None:
    server = ServerProcess(tmp_path, {"DATABASE_URL": sqlite_url})
    try:
        server.start(wait=False)
        started = time.monotonic()
        result = invoke("deploy", "check", server.url, "--wait", "30", "--timeout", "2")
        assert result.exit_code == 0, result.output
        FIGURES.append(
            f"deploy check --wait: passed {time.monotonic() - started:.1f} s after spawning serve"
        )
    finally:
        server.__exit__(None, None, None)


def test_database_down_fails_naming_health_db(tmp_path: Path) -> None:
    password = SCAN.register("dc-pw'\"@/%:x")
    pg = ThrowawayPostgres(tmp_path / "pg", password=password)
    pg.start()
    try:
        env = {"DATABASE_URL": pg.url(), "AUTHKEEP_DB_PROBE_TIMEOUT": "2"}
        assert invoke("db", "migrate", env=env).exit_code == 0
        with ServerProcess(tmp_path, env) as server:
            assert invoke("deploy", "check", server.url).exit_code == 0
            pg.stop()
            started = time.monotonic()
            result = invoke("deploy", "check", server.url, "--json", "--timeout", "5")
            elapsed = time.monotonic() - started
        FIGURES.append(f"OPS-04 deploy check with the database down: exit 1 in {elapsed:.1f} s")
        assert result.exit_code == 1
        body = json.loads(result.stdout)
        checks = {c["name"]: c for c in body["checks"]}
        assert checks["health"]["ok"] is True
        assert checks["health_db"]["ok"] is False
        assert checks["health_db"]["status"] == 503
        assert "/health/db: 503 database_unavailable" in body["detail"]
        assert checks["version"]["ok"] is True
        assert elapsed < 10
    finally:
        pg.cleanup()
