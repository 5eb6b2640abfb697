"""Settings built the way the server builds them: from environment variables."""

from __future__ import annotations

import pytest

from authkeep.config import Settings, load_settings


def settings_from(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    """Set these variables, then read the settings as a real start would."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load_settings()
