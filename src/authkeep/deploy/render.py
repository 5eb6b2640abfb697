"""`authkeep deploy init`: render the deploy files of a target from the package's templates.

Templates ending in `.j2` are rendered with Jinja2 (strict: an unknown name is an error); the
others are copied as they are. Parameters are validated before they reach a template, so a value
cannot smuggle syntax into a TOML, YAML, Caddyfile, unit file or shell script.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import jinja2

from authkeep.errors import AuthkeepError


class DeployFilesExist(AuthkeepError):
    code = "files_exist"
    status_code = 409
    detail = "Some deploy files already exist; pass --force to overwrite them."


class InvalidDeployParameter(AuthkeepError):
    code = "invalid_parameter"
    status_code = 422


@dataclass(frozen=True)
class DeployParams:
    """What the templates are parametrised by; every field has a safe, editable default."""

    app_name: str = "authkeep"
    domain: str = "auth.example.com"
    port: int = 8080
    image: str = "authkeep:latest"
    user: str = "authkeep"
    region: str = "ewr"
    install_dir: str = "/opt/authkeep"
    python_version: str = "3.12"
    proxy_subnet: str = "172.30.53.0/24"

    def validate(self) -> DeployParams:
        for name, pattern in _PATTERNS.items():
            if not re.fullmatch(pattern, str(getattr(self, name))):
                raise InvalidDeployParameter(f"--{name.replace('_', '-')}: {_HINTS[name]}")
        if not 1 <= self.port <= 65535:
            raise InvalidDeployParameter("--port: must be between 1 and 65535.")
        try:
            ipaddress.ip_network(self.proxy_subnet)
        except ValueError:
            raise InvalidDeployParameter("--proxy-subnet: not a CIDR network.") from None
        return self


_PATTERNS = {
    "app_name": r"[a-z][a-z0-9-]{0,29}",
    "domain": r"(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9]"
    r"([A-Za-z0-9-]{0,61}[A-Za-z0-9])?",
    "image": r"[A-Za-z0-9][A-Za-z0-9._/:@-]{0,254}",
    "user": r"[a-z_][a-z0-9_-]{0,31}",
    "region": r"[a-z]{3}",
    "install_dir": r"/[A-Za-z0-9._/-]{0,200}",
    "python_version": r"3\.\d{1,2}",
    "proxy_subnet": r"[0-9a-fA-F.:/]{1,64}",
}
_HINTS = {
    "app_name": "lowercase letters, digits and '-', starting with a letter (max 30).",
    "domain": "a hostname such as auth.example.com.",
    "image": "a Docker image reference such as authkeep:latest.",
    "user": "a Unix user name such as authkeep.",
    "region": "a three-letter Fly region code such as ewr.",
    "install_dir": "an absolute path with no spaces or shell characters.",
    "python_version": "a Python version such as 3.12.",
    "proxy_subnet": "a CIDR network such as 172.30.53.0/24.",
}

# target → (template, output path, file mode); output paths may use {app_name}.
TARGETS: dict[str, tuple[tuple[str, str, int], ...]] = {
    "fly": (
        ("fly/fly.toml.j2", "fly.toml", 0o644),
        ("Dockerfile.j2", "Dockerfile", 0o644),
        ("dockerignore", ".dockerignore", 0o644),
    ),
    "compose": (
        ("compose/compose.yml.j2", "compose.yml", 0o644),
        ("Caddyfile.j2", "Caddyfile", 0o644),
        ("compose/01-create-app-role.sh", "db/init/01-create-app-role.sh", 0o755),
        ("compose/env.example.j2", ".env.example", 0o644),
        ("Dockerfile.j2", "Dockerfile", 0o644),
        ("dockerignore", ".dockerignore", 0o644),
    ),
    "systemd": (
        ("systemd/authkeep.service.j2", "{app_name}.service", 0o644),
        ("systemd/redeploy.sh.j2", "redeploy.sh", 0o755),
        ("systemd/authkeep.env.example.j2", "{app_name}.env.example", 0o644),
        ("systemd/migrate.env.example.j2", "migrate.env.example", 0o644),
        ("Caddyfile.j2", "Caddyfile", 0o644),
    ),
}


@dataclass(frozen=True)
class RenderedFile:
    path: str
    content: str
    mode: int


def _environment() -> jinja2.Environment:
    # These are config files and scripts, not HTML: escaping would corrupt them.
    return jinja2.Environment(
        loader=jinja2.PackageLoader("authkeep.deploy", "templates"),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # noqa: S701
    )


def _upstream(target: str, params: DeployParams) -> str:
    # Compose reaches the container by service name; on a VPS authkeep listens on loopback.
    host = "authkeep" if target == "compose" else "127.0.0.1"
    return f"{host}:{params.port}"


def render(target: str, params: DeployParams) -> list[RenderedFile]:
    """Every file of `target`, rendered in memory."""
    if target not in TARGETS:
        raise InvalidDeployParameter(f"--target: one of {', '.join(TARGETS)}.")
    params.validate()
    env = _environment()
    context = {
        **asdict(params),
        "upstream": _upstream(target, params),
        "volume": params.app_name.replace("-", "_") + "_data",
    }
    files = []
    for template, output, mode in TARGETS[target]:
        if template.endswith(".j2"):
            content = env.get_template(template).render(context)
        else:
            content = resources.files("authkeep.deploy").joinpath("templates", template).read_text()
        files.append(RenderedFile(output.format(app_name=params.app_name), content, mode))
    return files


def write(files: list[RenderedFile], directory: Path, *, force: bool = False) -> list[Path]:
    """Write the files under `directory`. Without `force`, nothing is written if any exists."""
    targets = [(directory / f.path, f) for f in files]
    existing = [str(path) for path, _ in targets if path.exists()]
    if existing and not force:
        raise DeployFilesExist(
            f"Not overwriting {', '.join(existing)}: edit them, or pass --force to replace them."
        )
    for path, file in targets:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(file.content)
        os.chmod(path, file.mode)
    return [path for path, _ in targets]
