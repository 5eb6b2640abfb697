"""The server's own secrets: generated on first start in standalone mode, required in production.

Standalone keeps them in `<data dir>/secrets.json` with file mode 0600. Production never
generates one: a missing secret is a start-up error that names the variable to set.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from pydantic import SecretStr

from authkeep.config import Settings
from authkeep.errors import ConfigError

SECRETS_FILE = "secrets.json"
# setting name → environment variable; issues that add secrets add them here.
REQUIRED_SECRETS = {"secret_key": "AUTHKEEP_SECRET_KEY"}
MIN_SECRET_LENGTH = 32


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
        names = ", ".join(REQUIRED_SECRETS[name] for name in missing)
        raise ConfigError(
            f"Missing secret: {names}. Production never generates secrets; set it, e.g. "
            f"`fly secrets set {REQUIRED_SECRETS[missing[0]]}=$(python -c 'import secrets; "
            "print(secrets.token_urlsafe(48))')`."
        )
    stored = _load_or_create(settings.data_dir / SECRETS_FILE, missing)
    return settings.model_copy(update={name: SecretStr(stored[name]) for name in missing})


def _load_or_create(path: Path, names: list[str]) -> dict[str, str]:
    stored: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    new = {name: secrets.token_urlsafe(48) for name in names if name not in stored}
    if new:
        stored.update(new)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Create with 0600 from the start: never a moment where the file is world-readable.
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(stored, handle)
        os.replace(tmp, path)
    os.chmod(path, 0o600)
    return stored
