"""redeploy.sh, run for real: a git checkout, a virtualenv, `authkeep db migrate`, a server
restart and `authkeep deploy check`, then a broken release that must be rolled back.

systemd itself cannot run in this container (PID 1 is not systemd), so `SYSTEMCTL` points at a
ten-line stand-in that restarts `authkeep serve` the way the unit would. Everything else is real.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from deploy_helpers import REPO, init, require_tool

from support.secrets_scan import FIGURES, SCAN
from support.server import free_port

SYSTEMCTL_STANDIN = """#!/usr/bin/env bash
# Stand-in for `systemctl restart UNIT`: stop the previous server, start a new one detached.
set -euo pipefail
[[ "$1" == restart ]] || { echo "only restart is supported" >&2; exit 2; }
if [[ -f "$PIDFILE" ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    kill -TERM "$(cat "$PIDFILE")"
    while kill -0 "$(cat "$PIDFILE")" 2>/dev/null; do sleep 0.1; done
fi
setsid "$VENV/bin/authkeep" serve --port "$PORT" >>"$SERVER_LOG" 2>&1 < /dev/null &
echo $! > "$PIDFILE"
"""


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def commit_version(origin: Path, version: str, *, broken: bool = False) -> str:
    init_py = origin / "src/authkeep/__init__.py"
    init_py.write_text(f'"""authkeep."""\n\n__version__ = "{version}"\n')
    app_py = origin / "src/authkeep/app.py"
    text = app_py.read_text()
    marker = "    settings = prepare(settings)\n"
    if broken:
        text = text.replace(marker, marker + '    raise RuntimeError("broken release")\n', 1)
    app_py.write_text(text)
    git(origin, "commit", "-qam", f"release {version}")
    return git(origin, "rev-parse", "HEAD")


@pytest.fixture
def checkout(tmp_path: Path) -> dict[str, Path | str]:
    """origin repo → clone in APP_DIR, the systemd files, and the environment redeploy.sh gets."""
    require_tool("git", "git")
    origin = tmp_path / "origin"
    origin.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, origin / name)
    shutil.copytree(REPO / "src", origin / "src", ignore=shutil.ignore_patterns("__pycache__"))
    git(origin, "init", "-q", "-b", "main")
    git(origin, "-c", "user.name=t", "-c", "user.email=t@t", "add", ".")
    git(origin, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "release 1")
    git(origin, "config", "user.name", "t")
    git(origin, "config", "user.email", "t@t")
    app = tmp_path / "app"
    subprocess.run(["git", "clone", "-q", str(origin), str(app)], check=True)
    venv = app / ".venv"
    (app / ".git/info/exclude").write_text(".venv/\n")
    files = init("systemd", tmp_path / "deploy", "--install-dir", str(app))
    (tmp_path / "systemctl").write_text(SYSTEMCTL_STANDIN)
    (tmp_path / "systemctl").chmod(0o755)
    database = f"sqlite:///{tmp_path / 'data' / 'authkeep.db'}"
    (tmp_path / "migrate.env").write_text(f"# admin DSN\nDATABASE_URL_ADMIN={database}\n")
    port = free_port()
    env = {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "APP_DIR": str(app),
        "SYSTEMCTL": str(tmp_path / "systemctl"),
        "MIGRATE_ENV": str(tmp_path / "migrate.env"),
        "HEALTH_URL": f"http://127.0.0.1:{port}",
        # The stand-in's and the server's own environment:
        "VENV": str(venv),
        "PORT": str(port),
        "PIDFILE": str(tmp_path / "server.pid"),
        "SERVER_LOG": str(tmp_path / "server.log"),
        "AUTHKEEP_DATA_DIR": str(tmp_path / "data"),
        "DATABASE_URL": database,
        "AUTHKEEP_ENV": "development",
    }
    return {"origin": origin, "app": app, "script": files / "redeploy.sh", "tmp": tmp_path, **env}


@pytest.fixture
def deployment(checkout: dict[str, Path | str]) -> dict[str, Path | str]:
    """The checkout installed into its .venv, as the first deploy by hand would leave it."""
    venv = Path(str(checkout["VENV"]))
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [venv / "bin/pip", "install", "-q", "--disable-pip-version-check", str(checkout["app"])],
        check=True, timeout=900,
    )  # fmt: skip
    return checkout


def redeploy(deployment: dict[str, Path | str], wait: int) -> subprocess.CompletedProcess[str]:
    env = {k: str(v) for k, v in deployment.items() if k.isupper()}
    env["HEALTH_WAIT"] = str(wait)
    done = subprocess.run(["bash", str(deployment["script"])], env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    SCAN.record("redeploy.sh", done.stdout + done.stderr)
    return done


def running_version(deployment: dict[str, Path | str]) -> str:
    version: str = httpx.get(f"{deployment['HEALTH_URL']}/api/version", timeout=5).json()["version"]
    return version


def stop_server(deployment: dict[str, Path | str]) -> None:
    pidfile = Path(str(deployment["PIDFILE"]))
    if pidfile.exists():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pidfile.read_text()), signal.SIGTERM)


def test_redeploy_deploys_then_rolls_back_a_broken_release(
    deployment: dict[str, Path | str],
) -> None:
    origin, app = Path(str(deployment["origin"])), Path(str(deployment["app"]))
    try:
        good = commit_version(origin, "0.1.0+good")
        started = time.monotonic()
        done = redeploy(deployment, wait=30)
        assert done.returncode == 0, done.stderr
        FIGURES.append(f"redeploy.sh good release: exit 0 in {time.monotonic() - started:.0f} s")
        assert git(app, "rev-parse", "HEAD") == good
        assert running_version(deployment) == "0.1.0+good"
        assert "authkeep 0.1.0+good is healthy" in done.stderr
        assert (Path(str(deployment["tmp"])) / "data" / "authkeep.db").exists()  # migrated

        commit_version(origin, "0.1.0+broken", broken=True)
        started = time.monotonic()
        failed = redeploy(deployment, wait=8)
        FIGURES.append(
            f"redeploy.sh broken release: exit {failed.returncode} after "
            f"{time.monotonic() - started:.0f} s, rolled back"
        )
        assert failed.returncode == 1, failed.stderr
        assert "FAILED: post-deploy health check" in failed.stderr
        assert f"Rolling back to {good}" in failed.stderr
        assert git(app, "rev-parse", "HEAD") == good
        assert running_version(deployment) == "0.1.0+good"
        assert "not healthy either" not in failed.stderr
    finally:
        stop_server(deployment)


def test_redeploy_refuses_a_dirty_checkout(checkout: dict[str, Path | str]) -> None:
    app = Path(str(checkout["app"]))
    head = git(app, "rev-parse", "HEAD")
    (app / "README.md").write_text("local edit\n")
    done = redeploy(checkout, wait=1)
    assert done.returncode == 2
    assert "uncommitted changes" in done.stderr
    assert git(app, "rev-parse", "HEAD") == head
