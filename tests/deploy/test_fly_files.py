"""fly.toml (TOML-parsed) and the Dockerfile, whose builder stage is really executed here."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from deploy_helpers import REPO, init

from authkeep import __version__
from support.secrets_scan import FIGURES


@pytest.fixture(scope="module")
def fly_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init("fly", tmp_path_factory.mktemp("fly"))


@pytest.fixture(scope="module")
def fly(fly_dir: Path) -> dict:  # type: ignore[type-arg]
    return tomllib.loads((fly_dir / "fly.toml").read_text())


def test_release_command_migrates(fly: dict) -> None:  # type: ignore[type-arg]
    assert fly["deploy"]["release_command"] == "authkeep db migrate"


def test_login_and_edge_processes_set_their_role(fly: dict) -> None:  # type: ignore[type-arg]
    processes = fly["processes"]
    assert set(processes) == {"login", "edge"}
    for role, command in processes.items():
        argv = shlex.split(command)
        assert f"AUTHKEEP_ROLE={role}" in argv
        assert argv[-2:] == ["authkeep", "serve"]


def test_only_login_mounts_the_volume(fly: dict) -> None:  # type: ignore[type-arg]
    mounts = fly["mounts"]
    assert len(mounts) == 1
    assert mounts[0]["processes"] == ["login"]
    assert mounts[0]["destination"] == fly["env"]["AUTHKEEP_DATA_DIR"] == "/data"


def test_health_checks_and_port(fly: dict) -> None:  # type: ignore[type-arg]
    service = fly["http_service"]
    assert service["internal_port"] == 8080
    assert service["force_https"] is True
    assert [c["path"] for c in service["checks"]] == ["/health"]
    db = fly["checks"]["db"]
    assert (db["type"], db["path"], db["port"]) == ("http", "/health/db", 8080)
    assert db["processes"] == ["login"]
    assert fly["env"]["AUTHKEEP_ENV"] == "production"
    assert fly["env"]["AUTHKEEP_PORT"] == "8080"


# --- the Dockerfile ----------------------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str | None
    steps: list[tuple[str, str]] = field(default_factory=list)

    def all(self, instruction: str) -> list[str]:
        return [args for op, args in self.steps if op == instruction]


def parse_dockerfile(text: str) -> list[Stage]:
    """Instructions per stage, with `\\` continuations joined and comments dropped."""
    logical, current = [], ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") and not current:
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    stages: list[Stage] = []
    for line in filter(str.strip, logical):
        op, _, args = line.strip().partition(" ")
        if op.upper() == "FROM":
            parts = args.split()
            stages.append(Stage(parts[0], parts[2] if len(parts) > 2 else None))
        elif stages:
            stages[-1].steps.append((op.upper(), args.strip()))
    return stages


def env_pairs(args: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in shlex.split(args))


@pytest.fixture(scope="module")
def stages(fly_dir: Path) -> list[Stage]:
    return parse_dockerfile((fly_dir / "Dockerfile").read_text())


def test_dockerfile_is_multi_stage_and_runs_as_a_non_root_user(stages: list[Stage]) -> None:
    builder, final = stages
    assert builder.name == "builder"
    assert builder.base.endswith("-slim")
    assert final.base.endswith("-slim")
    users = final.all("USER")
    assert len(users) == 1
    user = users[0].split(":")[0]
    assert user not in {"root", "0", ""}
    assert any(re.search(rf"useradd [^&]* {user}(\s|$)", run) for run in final.all("RUN"))
    assert final.all("EXPOSE") == ["8080"]
    assert final.all("CMD") == ['["authkeep", "serve"]']
    # The final image takes only the builder's virtualenv: no source tree, no .env, no data.
    builder_venv = env_pairs(builder.all("ENV")[0])["VIRTUAL_ENV"]
    assert final.all("COPY") == [f"--from=builder {builder_venv} {builder_venv}"]
    assert f"PATH={builder_venv}/bin:$PATH" in final.all("ENV")[0]


def test_dockerignore_keeps_secrets_and_data_out(fly_dir: Path) -> None:
    ignored = (fly_dir / ".dockerignore").read_text().split()
    for entry in (".env", "data/", ".venv/", ".git"):
        assert entry in ignored


def run_builder_stage(stage: Stage, context: Path, root: Path) -> dict[str, str]:
    """Execute the builder's WORKDIR/ENV/COPY/RUN steps on this machine, with the image's
    absolute paths moved under `root`. Returns the environment the stage ended with."""

    def host(path: str, cwd: Path) -> Path:
        return root / path.lstrip("/") if path.startswith("/") else cwd / path

    bin_dir = root / "usr-local-bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").symlink_to(sys.executable)  # the image's `python`
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(root)}
    cwd = root
    for op, args in stage.steps:
        if op == "ENV":
            for key, value in env_pairs(args).items():
                env[key] = str(host(value, cwd)) if value.startswith("/") else value
        elif op == "WORKDIR":
            cwd = host(args, cwd)
            cwd.mkdir(parents=True, exist_ok=True)
        elif op == "COPY":
            *sources, dest = shlex.split(args)
            for source in sources:
                target = host(dest, cwd)
                if (context / source).is_dir():
                    shutil.copytree(
                        context / source,
                        target,
                        dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__"),
                    )
                else:
                    target.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(context / source, target / Path(source).name)
        elif op == "RUN":
            # The pip cache is the only thing left out, so repeated runs need no downloads.
            run_env = {k: v for k, v in env.items() if k != "PIP_NO_CACHE_DIR"}
            run_env["HOME"] = os.environ.get("HOME", str(root))
            done = subprocess.run(
                ["sh", "-c", args],
                cwd=cwd,
                env=run_env,
                capture_output=True,
                text=True,
                timeout=900,
            )
            assert done.returncode == 0, f"RUN {args}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        else:
            raise AssertionError(f"the builder uses {op}, which this test does not emulate")
    return env


def test_builder_stage_really_builds_and_installs_authkeep(
    stages: list[Stage], tmp_path: Path
) -> None:
    import time

    started = time.monotonic()
    env = run_builder_stage(stages[0], REPO, tmp_path / "root")
    FIGURES.append(f"Dockerfile builder stage executed in {time.monotonic() - started:.0f} s")
    venv = Path(env["VIRTUAL_ENV"])
    wheels = list(Path(env["WHEEL_DIR"]).glob("authkeep-*.whl"))
    assert len(wheels) == 1
    names = zipfile.ZipFile(wheels[0]).namelist()
    for packaged in (
        "authkeep/deploy/templates/Caddyfile.j2",
        "authkeep/deploy/templates/compose/01-create-app-role.sh",
        "authkeep/migrations/versions/0001_users.py",
        "authkeep/py.typed",
    ):
        assert packaged in names, packaged
    assert not any(re.search(r"(^|/)(tests|\.env|data)/", name) for name in names)
    authkeep = venv / "bin" / "authkeep"
    help_text = subprocess.run([authkeep, "--help"], capture_output=True, text=True, check=True)
    assert "deploy" in help_text.stdout
    assert "keygen" in help_text.stdout
    version = subprocess.run([authkeep, "version"], capture_output=True, text=True, check=True)
    assert version.stdout.strip() == __version__
    # Templates are read from the installed wheel, not from this checkout.
    out = tmp_path / "from-wheel"
    subprocess.run(
        [authkeep, "deploy", "init", "--target", "compose", "--dir", out],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    assert (out / "db" / "init" / "01-create-app-role.sh").exists()
