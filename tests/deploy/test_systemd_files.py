"""The systemd unit (`systemd-analyze verify` and `security --offline`), its env files and
redeploy.sh (`bash -n`)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from deploy_helpers import init, require_tool

from support.secrets_scan import FIGURES


@pytest.fixture(scope="module")
def install_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkout whose .venv is the one running these tests, so ExecStart= really exists."""
    directory = tmp_path_factory.mktemp("install")
    (directory / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    assert (directory / ".venv" / "bin" / "authkeep").exists()
    return directory


@pytest.fixture(scope="module")
def systemd_dir(tmp_path_factory: pytest.TempPathFactory, install_dir: Path) -> Path:
    return init("systemd", tmp_path_factory.mktemp("systemd"), "--install-dir", str(install_dir))


def directives(unit: Path) -> list[tuple[str, str]]:
    pairs = []
    for line in unit.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            pairs.append((key, value))
    return pairs


def verify(unit: Path) -> subprocess.CompletedProcess[str]:
    analyze = require_tool("systemd-analyze", "systemd")
    return subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )


def test_unit_passes_systemd_analyze_verify_without_a_single_warning(systemd_dir: Path) -> None:
    done = verify(systemd_dir / "authkeep.service")
    assert done.returncode == 0, done.stderr
    assert done.stdout + done.stderr == ""


def test_verify_does_report_a_broken_unit(systemd_dir: Path, tmp_path: Path) -> None:
    """The control: the check above is not silent by construction."""
    broken = tmp_path / "authkeep.service"
    text = (systemd_dir / "authkeep.service").read_text()
    broken.write_text(text.replace("ProtectSystem=strict", "ProtectSystem=stritc"))
    done = verify(broken)
    assert "stritc" in done.stdout + done.stderr


def test_unit_sandbox_exposure_is_low(systemd_dir: Path) -> None:
    analyze = require_tool("systemd-analyze", "systemd")
    unit = str(systemd_dir / "authkeep.service")
    done = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", unit],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    match = re.search(r"Overall exposure level for authkeep.service: ([\d.]+)", done.stdout)
    assert match, done.stdout + done.stderr
    exposure = float(match.group(1))
    FIGURES.append(f"systemd-analyze security --offline authkeep.service: exposure {exposure}")
    assert exposure <= 2.0


def test_unit_runs_as_its_own_user_with_the_hardening_asked_for(systemd_dir: Path) -> None:
    pairs = directives(systemd_dir / "authkeep.service")
    settings = dict(pairs)
    expected = {
        "User": "authkeep",
        "Group": "authkeep",
        "DynamicUser": "no",
        "EnvironmentFile": "/etc/authkeep/authkeep.env",
        "Restart": "on-failure",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "ReadWritePaths": "/var/lib/authkeep",
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
        "UMask": "0077",
    }
    for key, value in expected.items():
        assert settings.get(key) == value, key
    assert ("SystemCallFilter", "@system-service") in pairs
    assert settings["ExecStart"].endswith("/.venv/bin/authkeep serve")
    assert settings["Environment"] == "AUTHKEEP_DATA_DIR=/var/lib/authkeep"


def test_env_files_keep_the_admin_dsn_away_from_the_server(systemd_dir: Path) -> None:
    server_env = (systemd_dir / "authkeep.env.example").read_text()
    assert "DATABASE_URL_ADMIN" not in server_env.split("Never put DATABASE_URL_ADMIN here.")[1]
    assert re.search(r"^AUTHKEEP_HOST=127\.0\.0\.1$", server_env, re.M)
    assert re.search(r"^AUTHKEEP_ENV=production$", server_env, re.M)
    assert "DATABASE_URL_ADMIN=" in (systemd_dir / "migrate.env.example").read_text()


def test_redeploy_script_is_valid_strict_bash(systemd_dir: Path) -> None:
    bash = require_tool("bash", "bash")
    script = systemd_dir / "redeploy.sh"
    subprocess.run([bash, "-n", str(script)], check=True)
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text
    for step in (
        "git rev-parse HEAD",
        "git pull",
        'pip" install',
        "db migrate",
        'restart "$UNIT"',
        'deploy check "$HEALTH_URL"',
        "git reset --quiet --hard",
    ):
        assert step in text, step
