"""`authkeep deploy init`: what each target writes, and that nothing is overwritten by accident."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from deploy_helpers import init, runner

from authkeep.cli import app
from authkeep.deploy.render import TARGETS, DeployParams, render

EXPECTED = {
    "fly": {"fly.toml", "Dockerfile", ".dockerignore"},
    "compose": {
        "compose.yml",
        "Caddyfile",
        "db/init/01-create-app-role.sh",
        ".env.example",
        "Dockerfile",
        ".dockerignore",
    },
    "systemd": {
        "authkeep.service",
        "redeploy.sh",
        "authkeep.env.example",
        "migrate.env.example",
        "Caddyfile",
    },
}


def written(directory: Path) -> set[str]:
    return {str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file()}


@pytest.mark.parametrize("target", sorted(EXPECTED))
def test_each_target_writes_its_files_fully_rendered(tmp_path: Path, target: str) -> None:
    directory = init(target, tmp_path / target)
    assert written(directory) == EXPECTED[target]
    for name in EXPECTED[target]:
        text = (directory / name).read_text()
        assert "{{" not in text, name
        assert "{%" not in text, name
        assert text.endswith("\n"), name
    for script in ("redeploy.sh", "db/init/01-create-app-role.sh"):
        if script in EXPECTED[target]:
            assert os.access(directory / script, os.X_OK), script


def test_parameters_reach_the_files(tmp_path: Path) -> None:
    args = ("--app-name", "pond-auth", "--domain", "auth.pond.dev", "--port", "9000")
    fly = init("fly", tmp_path / "fly", *args, "--region", "lhr")
    toml = (fly / "fly.toml").read_text()
    assert 'app = "pond-auth"' in toml
    assert 'primary_region = "lhr"' in toml
    assert "internal_port = 9000" in toml
    assert 'source = "pond_auth_data"' in toml
    systemd = init(
        "systemd", tmp_path / "systemd", *args, "--user", "ak", "--install-dir", "/srv/ak"
    )
    unit = (systemd / "pond-auth.service").read_text()
    assert "User=ak" in unit
    assert "ExecStart=/srv/ak/.venv/bin/authkeep serve" in unit
    assert "reverse_proxy 127.0.0.1:9000" in (systemd / "Caddyfile").read_text()
    compose = init("compose", tmp_path / "compose", *args, "--image", "registry.example/ak:1.2")
    assert "image: registry.example/ak:1.2" in (compose / "compose.yml").read_text()
    assert "reverse_proxy authkeep:9000" in (compose / "Caddyfile").read_text()


def test_existing_files_are_not_overwritten_without_force(tmp_path: Path) -> None:
    directory = init("compose", tmp_path)
    (directory / "Caddyfile").write_text("# my edits\n")
    before = {name: (directory / name).read_text() for name in written(directory)}
    (directory / "compose.yml").unlink()  # one file missing, one edited: still refuse all
    result = runner.invoke(app, ["deploy", "init", "--target", "compose", "--dir", str(directory)])
    assert result.exit_code == 2
    assert "files_exist" in result.output
    assert "--force" in result.output
    assert not (directory / "compose.yml").exists()
    assert (directory / "Caddyfile").read_text() == "# my edits\n"
    forced = runner.invoke(
        app, ["deploy", "init", "--target", "compose", "--dir", str(directory), "--force", "--json"]
    )
    assert forced.exit_code == 0, forced.output
    assert json.loads(forced.stdout)["ok"] is True
    assert (directory / "Caddyfile").read_text() != "# my edits\n"
    assert (directory / "compose.yml").exists()
    assert before.keys() - {"compose.yml"} <= written(directory)


@pytest.mark.parametrize(
    "args",
    [
        ("--domain", "auth.example.com\nrespond 200"),
        ("--app-name", 'x"; rm -rf /'),
        ("--user", "root$(id)"),
        ("--install-dir", "/opt/a b"),
        ("--image", "img\nports: ['5432:5432']"),
        ("--port", "70000"),
    ],
    ids=["domain", "app-name", "user", "install-dir", "image", "port"],
)
def test_parameters_that_could_inject_syntax_are_refused(
    tmp_path: Path, args: tuple[str, str]
) -> None:
    result = runner.invoke(
        app, ["deploy", "init", "--target", "systemd", "--dir", str(tmp_path), *args]
    )
    assert result.exit_code == 2
    assert "invalid_parameter" in result.output or "Invalid value" in result.output
    assert not any(tmp_path.iterdir())


def test_render_is_pure_and_covers_every_target() -> None:
    for target in TARGETS:
        first = render(target, DeployParams())
        assert first == render(target, DeployParams())
        assert {f.path for f in first} == EXPECTED[target]
