"""CHK-CR-04 (ASVS5 13.3.1-13.3.4, 13.1.4): production refuses development defaults.

authkeep has no built-in development key to refuse: a development server generates random
secrets into `<data dir>/secrets.json` (tests/core/test_secrets.py). The "known dev keys" of
an install are therefore the ones in that file, and the empty placeholders the shipped env
templates carry. Production must never fall back on either: it exits non-zero instead.

Proved elsewhere and not repeated here: production without any secret exits 1 and writes no
file (tests/cli/test_serve.py::test_production_requires_its_secret); a secret shorter than
32 characters is refused (tests/core/test_secrets.py); no signing key is generated in
production (tests/tokens/test_signing_keys.py).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest

from authkeep.config import load_settings
from authkeep.core.secrets import SECRETS_FILE, ensure_secrets, secret_for
from authkeep.errors import ConfigError
from authkeep.tokens.keys import KeySet
from support.secrets_scan import SCAN
from support.server import ServerProcess


def development_secrets(data_dir: Path) -> dict[str, str]:
    """What a development server leaves behind in its data dir: every secret it generates."""
    settings = ensure_secrets(load_settings(data_dir=data_dir))
    for name in ("jwt_key", "webhook_secret"):
        secret_for(settings, name)
    stored: dict[str, str] = json.loads((data_dir / SECRETS_FILE).read_text())
    for value in stored.values():
        SCAN.register(value)
    assert set(stored) == {"secret_key", "jwt_key", "webhook_secret"}
    return stored


def test_production_ignores_a_development_secrets_file_and_exits_CHK_CR_04(
    tmp_path: Path, sqlite_url: str
) -> None:
    """A data dir that a development server used (its secrets.json in place) started in
    production without AUTHKEEP_SECRET_KEY: exit 1 naming the variable; the file's key is
    never used, printed or changed."""
    stored = development_secrets(tmp_path / "data")
    before = (tmp_path / "data" / SECRETS_FILE).read_bytes()
    env = {"AUTHKEEP_ENV": "production", "DATABASE_URL": sqlite_url}
    server = ServerProcess(tmp_path, env).start(wait=False)
    assert server.process is not None
    assert server.process.wait(30) == 1
    output = server.output()
    assert "AUTHKEEP_SECRET_KEY" in output
    assert [name for name, value in stored.items() if value in output] == []
    assert (tmp_path / "data" / SECRETS_FILE).read_bytes() == before


@pytest.mark.parametrize("template", ["compose", "systemd"])
def test_production_refuses_the_empty_placeholder_of_the_shipped_env_files_CHK_CR_04(
    tmp_path: Path, sqlite_url: str, template: str
) -> None:
    """The env files `authkeep deploy` writes ship `AUTHKEEP_SECRET_KEY=` empty, for the
    operator to fill. Started as shipped, production exits 1."""
    placeholder = placeholder_value(template)
    env = {
        "AUTHKEEP_ENV": "production",
        "DATABASE_URL": sqlite_url,
        "AUTHKEEP_SECRET_KEY": placeholder,
    }
    server = ServerProcess(tmp_path, env).start(wait=False)
    assert server.process is not None
    assert server.process.wait(30) == 1
    assert "AUTHKEEP_SECRET_KEY" in server.output()
    assert not (tmp_path / "data" / SECRETS_FILE).exists()


def placeholder_value(template: str) -> str:
    """The value the shipped env template gives AUTHKEEP_SECRET_KEY."""
    names = {"compose": "compose/env.example.j2", "systemd": "systemd/authkeep.env.example.j2"}
    templates = resources.files("authkeep.deploy").joinpath("templates")
    text = templates.joinpath(names[template]).read_text()
    [line] = [line for line in text.splitlines() if line.startswith("AUTHKEEP_SECRET_KEY=")]
    return line.partition("=")[2].strip()


def test_production_neither_signs_nor_publishes_with_a_development_key_CHK_CR_04(
    tmp_path: Path,
) -> None:
    """The signing key and webhook secret a development server generated stay unused in
    production: the JWKS is empty, signing and webhooks name the variable to set."""
    stored = development_secrets(tmp_path / "data")
    settings = load_settings(env="production", secret_key="p" * 48, data_dir=tmp_path / "data")
    keyset = KeySet.from_settings(settings)
    assert keyset.jwks() == {"keys": []}
    with pytest.raises(ConfigError, match="AUTHKEEP_JWT_KEY"):
        keyset.require_signing()
    with pytest.raises(ConfigError, match="AUTHKEEP_WEBHOOK_SECRET") as caught:
        secret_for(settings, "webhook_secret")
    assert stored["webhook_secret"] not in str(caught.value)
