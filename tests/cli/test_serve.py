"""`authkeep serve` and the entry points, as real processes."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from authkeep import __version__
from support.server import ServerProcess

VENV_BIN = Path(sys.executable).parent


def test_console_script_and_module_both_work():
    script = subprocess.run(
        [str(VENV_BIN / "authkeep"), "--help"], capture_output=True, text=True, check=False
    )
    assert script.returncode == 0
    assert "db" in script.stdout
    assert "serve" in script.stdout
    module = subprocess.run(
        [sys.executable, "-m", "authkeep", "version"], capture_output=True, text=True, check=False
    )
    assert (module.returncode, module.stdout.strip()) == (0, __version__)


def test_zero_config_serves_sqlite_and_stops_gracefully_on_sigterm(tmp_path: Path):
    server = ServerProcess(tmp_path, {}).start()
    assert httpx.get(f"{server.url}/health/db").json()["database"] == "reachable"
    assert httpx.get(f"{server.url}/docs").status_code == 200
    secrets_file = tmp_path / "data" / "secrets.json"
    assert (tmp_path / "data" / "authkeep.db").exists()
    assert secrets_file.stat().st_mode & 0o777 == 0o600
    started = time.monotonic()
    # uvicorn finishes in-flight work, runs the shutdown, then re-raises the signal, as Unix
    # daemons do; systemd and Fly count a SIGTERM exit after a clean shutdown as success.
    assert server.stop(signal.SIGTERM) == -signal.SIGTERM
    assert time.monotonic() - started < 10
    output = server.output()
    assert f"http://127.0.0.1:{server.port}" in output
    assert "Application shutdown complete" in output


def test_production_strict_bootstrap_exits_nonzero_naming_each_failure(
    tmp_path: Path, closed_port: int
):
    env = {
        "AUTHKEEP_ENV": "production",
        "AUTHKEEP_SECRET_KEY": "k" * 48,
        "DATABASE_URL": f"postgresql://app:pw@127.0.0.1:{closed_port}/app",
        "DATABASE_URL_REMOTE": "postgresql://app:pw@db.invalid:5432/app",
        "AUTHKEEP_DB_PROBE_TIMEOUT": "2",
    }
    server = ServerProcess(tmp_path, env).start(wait=False)
    assert server.process is not None
    code = server.process.wait(30)
    output = server.output()
    assert code == 1, output
    assert "database_bootstrap_failed" in output
    assert "DATABASE_URL (" in output
    assert "connection refused" in output
    assert "DATABASE_URL_REMOTE" in output
    assert "does not resolve" in output
    assert not list(tmp_path.rglob("*.db"))


def test_production_requires_its_secret(tmp_path: Path, sqlite_url: str):
    """CHK-CR-04: production never generates its secret (no dev default): it exits 1."""
    env = {"AUTHKEEP_ENV": "production", "DATABASE_URL": sqlite_url}
    server = ServerProcess(tmp_path, env).start(wait=False)
    assert server.process is not None
    assert server.process.wait(30) == 1
    assert "AUTHKEEP_SECRET_KEY" in server.output()
    assert not (tmp_path / "data" / "secrets.json").exists()


def test_production_binds_all_interfaces(tmp_path: Path, sqlite_url: str):
    env = {
        "AUTHKEEP_ENV": "production",
        "DATABASE_URL": sqlite_url,
        "AUTHKEEP_SECRET_KEY": "s" * 48,
    }
    with ServerProcess(tmp_path, env) as server:
        assert httpx.get(f"{server.url}/health").status_code == 200
    assert f"Uvicorn running on http://0.0.0.0:{server.port}" in server.output()


def test_multi_worker_start_reports_configuration_errors_once_and_exits(tmp_path: Path):
    """The parent builds the app before starting workers, so a bad setting ends the start
    with one clean error instead of workers crashing and restarting."""
    env = {"AUTHKEEP_JWT_KEY": "not-a-pem-key"}
    server = ServerProcess(tmp_path, env, "--workers", "2").start(wait=False)
    assert server.process is not None
    assert server.process.wait(30) == 1
    output = server.output()
    assert "config_error" in output
    assert "AUTHKEEP_JWT_KEY" in output
    assert "Traceback" not in output
