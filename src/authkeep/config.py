"""Settings: read once from the environment (and an optional `.env`) into one typed object.

Names keep the seeds' spellings (`AUTH_DATABASE_URI`, `DATABASE_URL*`, `TRUSTED_ORIGINS`) so their
users can switch without renaming secrets; everything else is `AUTHKEEP_*`. Nothing here runs at
import time: call `load_settings()`.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Environment(enum.StrEnum):
    DEVELOPMENT = "development"
    PRODUCTION = "production"


class Role(enum.StrEnum):
    STANDALONE = "standalone"
    LOGIN = "login"
    EDGE = "edge"


class LogFormat(enum.StrEnum):
    TEXT = "text"
    JSON = "json"


def _alias(*names: str) -> Any:
    return Field(default=None, validation_alias=AliasChoices(*names))


class Settings(BaseSettings):
    """Every setting authkeep reads. Secrets are `SecretStr` so they never print by accident."""

    model_config = SettingsConfigDict(
        env_prefix="AUTHKEEP_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
    )

    env: Environment = Environment.DEVELOPMENT
    role: Role | None = None
    login_url: str | None = None
    data_dir: Path = Path("data")
    public_url: str | None = None
    host: str | None = None
    port: int = Field(default=8080, ge=1, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    log_format: LogFormat = LogFormat.TEXT
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"

    secret_key: SecretStr | None = None
    redis_url: SecretStr | None = None

    # Database: the seeds' variable names, in SPEC §4 precedence order.
    auth_database_uri: SecretStr | None = _alias("AUTH_DATABASE_URI")
    database_url: SecretStr | None = _alias("DATABASE_URL")
    database_url_internal: SecretStr | None = _alias("DATABASE_URL_INTERNAL")
    database_url_local: SecretStr | None = _alias("DATABASE_URL_LOCAL")
    database_url_remote: SecretStr | None = _alias("DATABASE_URL_REMOTE")
    database_url_admin: SecretStr | None = _alias("DATABASE_URL_ADMIN")
    strict_db_bootstrap: bool | None = None
    db_rewrite_internal: bool = True
    db_local_proxy: str = "localhost:5432"
    db_probe_timeout: float = Field(default=5.0, gt=0, le=120)
    db_connect_timeout: int = Field(default=10, ge=1, le=300)
    db_pool_size: int = Field(default=5, ge=1, le=200)
    db_max_overflow: int = Field(default=10, ge=0, le=500)
    db_pool_timeout: float = Field(default=10.0, gt=0, le=300)
    db_statement_timeout_ms: int = Field(default=30_000, ge=0)
    db_idle_in_transaction_timeout_ms: int = Field(default=60_000, ge=0)
    health_db_timeout: float = Field(default=2.0, gt=0, le=60)

    # Identity (issue "Identity"; RELIABILITY A-F).
    password_min_length: int = Field(default=15, ge=8, le=64)
    password_min_length_with_mfa: int = Field(default=8, ge=8, le=64)
    password_max_length: int = Field(default=256, ge=64, le=4096)
    hash_concurrency: int | None = Field(default=None, ge=1, le=64)
    hash_queue_limit: int = Field(default=64, ge=1, le=10_000)
    session_idle_minutes: int = Field(default=30, ge=1)
    session_absolute_hours: int = Field(default=12, ge=1)
    session_renew_seconds: int = Field(default=60, ge=1)
    session_fresh_minutes: int = Field(default=10, ge=1)
    max_sessions_per_user: int = Field(default=20, ge=1)
    login_max_failures: int = Field(default=100, ge=1, le=100)
    login_ip_failures_per_minute: int = Field(default=20, ge=1)
    # Progressive delay per account (CHK-BF-02): after `login_delay_after` consecutive failures,
    # failure k makes the next attempt wait min(max, base * 2 ** (k - after - 1)) seconds.
    login_delay_after: int = Field(default=5, ge=0, le=100)
    login_delay_base_seconds: float = Field(default=1.0, ge=0, le=3600)
    login_delay_max_seconds: float = Field(default=900.0, ge=0, le=86_400)
    admin_mfa_required: bool = False
    metrics_enabled: bool = False
    require_verified_email: bool = False
    email_token_minutes: int = Field(default=60, ge=1, le=1440)
    reset_token_minutes: int = Field(default=30, ge=1, le=1440)
    setup_link_minutes: int = Field(default=60, ge=1, le=1440)
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # Signing keys and operations (issue "Operations").
    jwt_key: SecretStr | None = None
    jwt_next_key: SecretStr | None = None
    jwt_issuer: str | None = None
    jwt_audience: str = "authkeep"
    db_app_role: str = "authkeep_app"
    backup_dir: Path | None = None
    backup_keep: int = Field(default=7, ge=1, le=1000)

    # API keys, usage, limits, plans (issue "API keys"; SPEC §7, RELIABILITY G and K).
    key_prefix: str = Field(default="ak", pattern=r"^[a-z][a-z0-9]{0,15}$")
    key_metadata_max_bytes: int = Field(default=4096, ge=64, le=65_536)
    key_cache_seconds: float = Field(default=10.0, ge=0, le=300)
    key_reroll_grace_max_hours: int = Field(default=168, ge=0, le=8760)
    usage_metering: bool = True
    usage_flush_seconds: float = Field(default=1.0, gt=0, le=60)
    usage_flush_events: int = Field(default=1000, ge=1, le=1_000_000)
    # authkeep's own API (seed 000 defaults): per API key, per owner, per anonymous client IP.
    api_limit_per_key: int = Field(default=120, ge=1)
    api_limit_per_owner: int = Field(default=300, ge=1)
    api_limit_per_ip: int = Field(default=60, ge=1)
    api_limit_window_seconds: float = Field(default=60.0, gt=0, le=3600)
    webhook_url: str | None = None
    webhook_secret: SecretStr | None = None
    webhook_timeout: float = Field(default=5.0, gt=0, le=60)
    webhook_max_attempts: int = Field(default=8, ge=1, le=50)
    key_expiry_warning_days: int = Field(default=7, ge=1, le=365)

    trusted_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias=AliasChoices("TRUSTED_ORIGINS")
    )

    smtp_host: str | None = None
    smtp_port: int = 587
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_from: str = "authkeep <no-reply@localhost>"
    smtp_starttls: bool = True

    # Fly.io's own variables: their presence is how authkeep knows it runs on Fly.
    fly_app_name: str | None = _alias("FLY_APP_NAME")
    fly_machine_id: str | None = _alias("FLY_MACHINE_ID")

    @field_validator(
        "auth_database_uri",
        "database_url",
        "database_url_internal",
        "database_url_local",
        "database_url_remote",
        "database_url_admin",
        "secret_key",
        "jwt_key",
        "jwt_next_key",
        "redis_url",
        "webhook_url",
        "webhook_secret",
        "smtp_password",
        "fly_app_name",
        "fly_machine_id",
        "login_url",
        "public_url",
        "role",
        "strict_db_bootstrap",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        """Empty or whitespace-only values count as unset (SPEC §4)."""
        if isinstance(value, str) and not value.strip():
            return None
        return value.strip() if isinstance(value, str) else value

    @field_validator("trusted_origins", "trusted_proxies", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [item.strip().rstrip("/") for item in value.split(",") if item.strip()]
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("trusted_proxies")
    @classmethod
    def _valid_networks(cls, value: list[str]) -> list[str]:
        import ipaddress

        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"'{item}' is not an IP address or CIDR range") from None
        return value

    @property
    def on_fly(self) -> bool:
        return self.fly_app_name is not None

    @property
    def is_production(self) -> bool:
        """Production is explicit (`AUTHKEEP_ENV=production`) or implied by running on Fly."""
        return self.env is Environment.PRODUCTION or self.on_fly

    @property
    def strict_bootstrap(self) -> bool:
        if self.strict_db_bootstrap is not None:
            return self.strict_db_bootstrap
        return self.is_production

    @property
    def bind_host(self) -> str:
        """127.0.0.1 in development; 0.0.0.0 in production and on Fly (seed 001)."""
        if self.host:
            return self.host
        return "0.0.0.0" if self.is_production else "127.0.0.1"  # noqa: S104


def load_settings(**overrides: Any) -> Settings:
    """Read the environment (and `.env`) once. Overrides are for tests and the CLI's flags.

    Invalid values raise `ConfigError` naming each variable; the values themselves are never
    echoed, since they may be secrets.
    """
    from authkeep.errors import ConfigError

    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(f"{_env_name(error['loc'])}: {error['msg']}" for error in exc.errors())
        raise ConfigError(f"Invalid configuration: {problems}.") from None


def _env_name(loc: tuple[int | str, ...]) -> str:
    name = str(loc[0]) if loc else "?"
    field = Settings.model_fields.get(name)
    alias = field.validation_alias if field else None
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return f"AUTHKEEP_{name.upper()}"


def resolve_role(settings: Settings) -> Role:
    """Which node this is (SPEC §2, seed 004 corrected).

    An explicit `AUTHKEEP_ROLE` wins. On Fly (`FLY_MACHINE_ID` set) a mounted data dir means login
    and none means edge. Off Fly the node is standalone.
    """
    if settings.role is not None:
        return settings.role
    if settings.fly_machine_id is not None:
        return Role.LOGIN if settings.data_dir.is_dir() else Role.EDGE
    return Role.STANDALONE
