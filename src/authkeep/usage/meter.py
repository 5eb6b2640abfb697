"""Placeholder for the usage meter (issue "API keys")."""

from __future__ import annotations

import uuid

from authkeep.config import Settings
from authkeep.core.db import Database


class UsageMeter:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def record(
        self, key_id: uuid.UUID, user_id: uuid.UUID, owner: str, outcome: str, units: int
    ) -> None:
        """Count one verification. Never blocks and never touches the database."""

    async def start(self, database: Database) -> None:
        return None

    async def stop(self) -> None:
        return None
