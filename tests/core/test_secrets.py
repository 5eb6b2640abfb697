"""The server's own secrets: generated and kept in standalone mode, required in production."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from authkeep.config import Settings
from authkeep.core.secrets import MIN_SECRET_LENGTH, ensure_secrets
from authkeep.errors import ConfigError
from support.settings import settings_from


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


def settings_in(monkeypatch: pytest.MonkeyPatch, data_dir: Path, **env: str) -> Settings:
    return settings_from(monkeypatch, AUTHKEEP_DATA_DIR=str(data_dir), **env)


def secret_of(settings: Settings) -> str:
    assert settings.secret_key is not None
    return settings.secret_key.get_secret_value()


def test_standalone_generates_secret_key_into_data_dir(
    monkeypatch: pytest.MonkeyPatch, data_dir: Path
) -> None:
    secret = secret_of(ensure_secrets(settings_in(monkeypatch, data_dir)))
    assert len(secret) >= MIN_SECRET_LENGTH
    assert json.loads((data_dir / "secrets.json").read_text()) == {"secret_key": secret}


def test_generated_secrets_file_is_owner_only(
    monkeypatch: pytest.MonkeyPatch, data_dir: Path
) -> None:
    ensure_secrets(settings_in(monkeypatch, data_dir))
    assert (data_dir / "secrets.json").stat().st_mode & 0o777 == 0o600


def test_generated_secret_is_stable_across_restarts(
    monkeypatch: pytest.MonkeyPatch, data_dir: Path
) -> None:
    first = secret_of(ensure_secrets(settings_in(monkeypatch, data_dir)))
    second = secret_of(ensure_secrets(settings_in(monkeypatch, data_dir)))
    assert second == first


def test_existing_secrets_file_is_tightened_to_owner_only(
    monkeypatch: pytest.MonkeyPatch, data_dir: Path
) -> None:
    data_dir.mkdir()
    path = data_dir / "secrets.json"
    path.write_text(json.dumps({"secret_key": "s" * 48}))
    path.chmod(0o644)
    assert secret_of(ensure_secrets(settings_in(monkeypatch, data_dir))) == "s" * 48
    assert path.stat().st_mode & 0o777 == 0o600


def test_secret_from_environment_is_used_and_not_written(
    monkeypatch: pytest.MonkeyPatch, data_dir: Path
) -> None:
    settings = settings_in(monkeypatch, data_dir, AUTHKEEP_SECRET_KEY="e" * 48)
    assert secret_of(ensure_secrets(settings)) == "e" * 48
    assert not (data_dir / "secrets.json").exists()


@pytest.mark.parametrize(
    "env", [{"AUTHKEEP_ENV": "production"}, {"FLY_APP_NAME": "pond-auth"}], ids=["env", "fly"]
)
def test_production_without_secret_is_config_error_and_writes_nothing(
    monkeypatch: pytest.MonkeyPatch, data_dir: Path, env: dict[str, str]
) -> None:
    settings = settings_in(monkeypatch, data_dir, **env)
    with pytest.raises(ConfigError) as caught:
        ensure_secrets(settings)
    assert "AUTHKEEP_SECRET_KEY" in caught.value.detail
    assert not (data_dir / "secrets.json").exists()


@pytest.mark.parametrize(
    "env", [{"AUTHKEEP_ENV": "production"}, {"FLY_APP_NAME": "pond-auth"}], ids=["env", "fly"]
)
def test_too_short_secret_in_production_is_config_error(
    monkeypatch: pytest.MonkeyPatch, data_dir: Path, env: dict[str, str]
) -> None:
    short = "sh0rt-s3cret"
    settings = settings_in(monkeypatch, data_dir, AUTHKEEP_SECRET_KEY=short, **env)
    with pytest.raises(ConfigError) as caught:
        ensure_secrets(settings)
    assert "AUTHKEEP_SECRET_KEY" in caught.value.detail
    assert short not in str(caught.value)


def test_long_enough_secret_in_production_is_accepted_and_not_written(
    monkeypatch: pytest.MonkeyPatch, data_dir: Path
) -> None:
    secret = "p" * MIN_SECRET_LENGTH
    settings = settings_in(
        monkeypatch, data_dir, AUTHKEEP_ENV="production", AUTHKEEP_SECRET_KEY=secret
    )
    assert secret_of(ensure_secrets(settings)) == secret
    assert not (data_dir / "secrets.json").exists()
