"""Shared by the deploy tests: render a target with the real CLI, and find the real tools."""

from __future__ import annotations

import shutil
from pathlib import Path

from typer.testing import CliRunner

from authkeep.cli import app
from support.secrets_scan import SCAN

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


def init(target: str, directory: Path, *args: str) -> Path:
    """`authkeep deploy init --target TARGET --dir DIRECTORY ARGS…`; fails the test on error."""
    result = runner.invoke(
        app, ["deploy", "init", "--target", target, "--dir", str(directory), *args]
    )
    SCAN.record(f"cli:deploy init {target}", result.output)
    assert result.exit_code == 0, result.output
    return directory


def require_tool(name: str, package: str) -> str:
    """The path of a real tool the test needs; a missing one fails (never skips) the test."""
    path = shutil.which(name)
    assert path is not None, (
        f"`{name}` is not installed. .ci/run installs it (apt-get install -y {package}); "
        f"locally run: apt-get install -y {package}"
    )
    return path
