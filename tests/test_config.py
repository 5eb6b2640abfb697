"""SPEC §2-3: settings read from the environment, and the node's role."""

from __future__ import annotations

from pathlib import Path

import pytest

from authkeep.config import Environment, Role, load_settings, resolve_role
from authkeep.errors import ConfigError
from support.settings import settings_from

# --- the seeds' variable names ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "field"),
    [
        ("AUTH_DATABASE_URI", "auth_database_uri"),
        ("DATABASE_URL", "database_url"),
        ("DATABASE_URL_INTERNAL", "database_url_internal"),
        ("DATABASE_URL_LOCAL", "database_url_local"),
        ("DATABASE_URL_REMOTE", "database_url_remote"),
        ("DATABASE_URL_ADMIN", "database_url_admin"),
    ],
)
def test_seed_database_variable_names_are_read(
    monkeypatch: pytest.MonkeyPatch, variable: str, field: str
) -> None:
    dsn = f"postgresql://app:pw@{field.replace('_', '-')}/app"
    settings = settings_from(monkeypatch, **{variable: dsn})
    assert getattr(settings, field).get_secret_value() == dsn


def test_settings_repr_never_shows_database_password(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_from(
        monkeypatch,
        DATABASE_URL="postgresql://app:Sup3rSecretPw@db/app",
        AUTHKEEP_SECRET_KEY="k" * 48,
    )
    assert "Sup3rSecretPw" not in repr(settings)
    assert "k" * 48 not in repr(settings)


def test_trusted_origins_are_comma_split(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_from(
        monkeypatch, TRUSTED_ORIGINS="https://app.example.com, https://admin.example.com/ ,,"
    )
    assert settings.trusted_origins == ["https://app.example.com", "https://admin.example.com"]


def test_trusted_origins_default_to_none(monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings_from(monkeypatch).trusted_origins == []


def test_fly_app_name_is_read_and_means_on_fly(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_from(monkeypatch, FLY_APP_NAME="pond-auth")
    assert settings.fly_app_name == "pond-auth"
    assert settings.on_fly is True


def test_blank_fly_app_name_means_off_fly(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_from(monkeypatch, FLY_APP_NAME="   ")
    assert settings.on_fly is False
    assert settings.is_production is False


def test_dotenv_file_in_working_directory_is_read(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text("DATABASE_URL=postgresql://app:pw@from-dotenv/app\n")
    settings = settings_from(monkeypatch)
    assert settings.database_url is not None
    assert settings.database_url.get_secret_value() == "postgresql://app:pw@from-dotenv/app"


def test_environment_wins_over_dotenv_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("AUTHKEEP_PORT=9000\n")
    assert settings_from(monkeypatch, AUTHKEEP_PORT="9100").port == 9100


# --- production, strict bootstrap, bind host -------------------------------------------------


def test_development_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_from(monkeypatch)
    assert settings.env is Environment.DEVELOPMENT
    assert settings.is_production is False


def test_fly_app_name_implies_production(monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings_from(monkeypatch, FLY_APP_NAME="pond-auth").is_production is True


def test_authkeep_env_production_is_production(monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings_from(monkeypatch, AUTHKEEP_ENV="production").is_production is True


def test_strict_bootstrap_is_off_in_development(monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings_from(monkeypatch).strict_bootstrap is False


@pytest.mark.parametrize(
    "env", [{"AUTHKEEP_ENV": "production"}, {"FLY_APP_NAME": "pond-auth"}], ids=["env", "fly"]
)
def test_strict_bootstrap_is_on_in_production_and_on_fly(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    assert settings_from(monkeypatch, **env).strict_bootstrap is True


def test_explicit_strict_off_wins_on_fly(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_from(
        monkeypatch, FLY_APP_NAME="pond-auth", AUTHKEEP_STRICT_DB_BOOTSTRAP="false"
    )
    assert settings.strict_bootstrap is False


def test_explicit_strict_on_wins_in_development(monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings_from(monkeypatch, AUTHKEEP_STRICT_DB_BOOTSTRAP="true").strict_bootstrap is True


def test_blank_strict_setting_falls_back_to_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_from(
        monkeypatch, AUTHKEEP_ENV="production", AUTHKEEP_STRICT_DB_BOOTSTRAP=" "
    )
    assert settings.strict_bootstrap is True


def test_bind_host_is_loopback_in_development(monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings_from(monkeypatch).bind_host == "127.0.0.1"


@pytest.mark.parametrize(
    "env", [{"AUTHKEEP_ENV": "production"}, {"FLY_APP_NAME": "pond-auth"}], ids=["env", "fly"]
)
def test_bind_host_is_all_interfaces_in_production(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    assert settings_from(monkeypatch, **env).bind_host == "0.0.0.0"


def test_explicit_host_wins_over_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_from(monkeypatch, AUTHKEEP_ENV="production", AUTHKEEP_HOST="10.0.0.5")
    assert settings.bind_host == "10.0.0.5"


# --- role (SPEC §2) --------------------------------------------------------------------------


def test_explicit_role_wins_over_fly_detection(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "data").mkdir()
    settings = settings_from(monkeypatch, AUTHKEEP_ROLE="edge", FLY_MACHINE_ID="e784079b449483")
    assert resolve_role(settings) is Role.EDGE


def test_fly_machine_with_mounted_data_dir_is_login(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    settings = settings_from(
        monkeypatch, FLY_MACHINE_ID="e784079b449483", AUTHKEEP_DATA_DIR=str(volume)
    )
    assert resolve_role(settings) is Role.LOGIN


def test_fly_machine_without_data_dir_is_edge(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = settings_from(
        monkeypatch, FLY_MACHINE_ID="e784079b449483", AUTHKEEP_DATA_DIR=str(tmp_path / "absent")
    )
    assert resolve_role(settings) is Role.EDGE


def test_off_fly_node_is_standalone_even_with_a_data_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "data").mkdir()
    assert resolve_role(settings_from(monkeypatch)) is Role.STANDALONE


def test_blank_role_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_role(settings_from(monkeypatch, AUTHKEEP_ROLE="  ")) is Role.STANDALONE


# --- invalid values --------------------------------------------------------------------------


def test_invalid_port_is_config_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AUTHKEEP_PORT", "abc")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "AUTHKEEP_PORT" in caught.value.detail
    assert "abc" not in str(caught.value)


def test_out_of_range_port_is_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTHKEEP_PORT", "70000")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "AUTHKEEP_PORT" in caught.value.detail
    assert "70000" not in str(caught.value)


def test_invalid_role_is_config_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AUTHKEEP_ROLE", "primary-xyz")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "AUTHKEEP_ROLE" in caught.value.detail
    assert "primary-xyz" not in str(caught.value)


def test_every_invalid_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTHKEEP_PORT", "abc")
    monkeypatch.setenv("AUTHKEEP_ENV", "staging")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "AUTHKEEP_PORT" in caught.value.detail
    assert "AUTHKEEP_ENV" in caught.value.detail


def test_invalid_trusted_proxy_and_log_level_are_config_errors(monkeypatch: pytest.MonkeyPatch):
    with pytest.raises(ConfigError, match="AUTHKEEP_TRUSTED_PROXIES"):
        settings_from(monkeypatch, AUTHKEEP_TRUSTED_PROXIES="10.0.0.0/8,not-an-ip")
    monkeypatch.delenv("AUTHKEEP_TRUSTED_PROXIES")
    with pytest.raises(ConfigError, match="AUTHKEEP_LOG_LEVEL"):
        settings_from(monkeypatch, AUTHKEEP_LOG_LEVEL="LOUD")
