"""The server's own secrets: generated on first start in standalone mode, required in production.

Standalone keeps them in `<data dir>/secrets.json` with file mode 0600. Production never
generates one: a missing secret is a start-up error that names the variable to set.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import SecretStr

from authkeep.config import Settings
from authkeep.errors import ConfigError

SECRETS_FILE = "secrets.json"
# setting name → environment variable; issues that add secrets add them here.
REQUIRED_SECRETS = {"secret_key": "AUTHKEEP_SECRET_KEY"}
# Secrets that only the feature using them asks for (`secret_for`), so production requires them
# only once that feature is in use: the ES256 signing key, once something signs.
ON_DEMAND_SECRETS = {"jwt_key": "AUTHKEEP_JWT_KEY", "webhook_secret": "AUTHKEEP_WEBHOOK_SECRET"}
MIN_SECRET_LENGTH = 32


def new_signing_key_pem() -> str:
    """A new P-256 private key, PEM (PKCS8): what `authkeep keygen` prints."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return pem.decode("ascii")


def _random_secret() -> str:
    return secrets.token_urlsafe(48)


# How each secret is made, when it is not a random string: setting name → generator, and the
# command that prints one for `fly secrets set`.
GENERATORS: dict[str, Callable[[], str]] = {"jwt_key": new_signing_key_pem}
GENERATE_COMMANDS = {"jwt_key": "authkeep keygen"}
_DEFAULT_COMMAND = "python -c 'import secrets; print(secrets.token_urlsafe(48))'"


def ensure_secrets(settings: Settings) -> Settings:
    """Return settings with every required secret present, or raise naming what is missing."""
    missing = [name for name in REQUIRED_SECRETS if getattr(settings, name) is None]
    weak = [
        REQUIRED_SECRETS[name]
        for name in REQUIRED_SECRETS
        if (value := getattr(settings, name)) is not None
        and len(value.get_secret_value()) < MIN_SECRET_LENGTH
    ]
    if weak and settings.is_production:
        raise ConfigError(
            f"{', '.join(weak)} must be at least {MIN_SECRET_LENGTH} characters. "
            "Generate one with: python -c 'import secrets; print(secrets.token_urlsafe(48))'"
        )
    if not missing:
        return settings
    if settings.is_production:
        raise missing_secret(missing)
    stored = _load_or_create(settings.data_dir / SECRETS_FILE, missing)
    return settings.model_copy(update={name: SecretStr(stored[name]) for name in missing})


def secret_for(settings: Settings, name: str) -> SecretStr:
    """One secret, for the feature that needs it: the configured value; in standalone the one
    kept in the data dir (generated on first use); in production a `ConfigError` naming it."""
    value: SecretStr | None = getattr(settings, name)
    if value is not None:
        return value
    if settings.is_production:
        raise missing_secret([name])
    return SecretStr(_load_or_create(settings.data_dir / SECRETS_FILE, [name])[name])


def missing_secret(names: list[str]) -> ConfigError:
    """The production error for missing secrets: names each variable and how to make one."""
    env = {**REQUIRED_SECRETS, **ON_DEMAND_SECRETS}
    first = names[0]
    command = GENERATE_COMMANDS.get(first, _DEFAULT_COMMAND)
    return ConfigError(
        f"Missing secret: {', '.join(env[name] for name in names)}. Production never generates "
        f'secrets; set it, e.g. `fly secrets set {env[first]}="$({command})"`.'
    )


def _load_or_create(path: Path, names: list[str]) -> dict[str, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Serialise read-generate-write: worker processes starting together must agree on one value.
    lock_fd = os.open(path.with_suffix(".lock"), os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        return _update_locked(path, names)
    finally:
        os.close(lock_fd)


def _update_locked(path: Path, names: list[str]) -> dict[str, str]:
    stored: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    new = {name: GENERATORS.get(name, _random_secret)() for name in names if name not in stored}
    if new:
        stored.update(new)
        # Create with 0600 from the start: never a moment where the file is world-readable.
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(stored, handle)
        os.replace(tmp, path)
    os.chmod(path, 0o600)
    return stored
