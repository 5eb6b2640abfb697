"""Fresh, migrated databases per test (cheap copies of one migrated template) and an in-process
app client on top of them.

Migrations run once per engine per test session; each test then gets its own copy — a PostgreSQL
`CREATE DATABASE … TEMPLATE` or a file copy of a closed SQLite file — so tests can commit, race
and fail without seeing each other.
"""

from __future__ import annotations

import secrets
import shutil
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from authkeep.config import load_settings
from authkeep.core import migrate
from authkeep.core.db import Database
from authkeep.core.dsn import candidates


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


async def migrate_url(url: str) -> None:
    settings = load_settings(database_url=url)
    database = Database.open(candidates(settings)[0], settings)
    try:
        await migrate.upgrade(database.engine)
    finally:
        await database.dispose()


class PostgresTemplates:
    """Per-test databases cloned from one migrated template on the PostgreSQL under test."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.template = f"ak_tpl_{secrets.token_hex(4)}"
        self.ready = False

    async def _admin(self) -> asyncpg.Connection:
        return await asyncpg.connect(with_database(self.admin_url, "postgres"))

    async def fresh(self) -> str:
        conn = await self._admin()
        try:
            if not self.ready:
                await conn.execute(f'CREATE DATABASE "{self.template}"')
                await migrate_url(with_database(self.admin_url, self.template))
                self.ready = True
            name = f"ak_{secrets.token_hex(6)}"
            await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        finally:
            await conn.close()
        return with_database(self.admin_url, name)

    async def drop(self, url: str) -> None:
        conn = await self._admin()
        try:
            name = urlsplit(url).path.lstrip("/")
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    async def close(self) -> None:
        if self.ready:
            await self.drop(with_database(self.admin_url, self.template))


class SqliteTemplates:
    """Per-test SQLite files copied from one migrated (and closed) template file."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.template = directory / "template.db"

    async def fresh(self) -> str:
        if not self.template.exists():
            await migrate_url(f"sqlite:///{self.template}")
        target = self.directory / f"t{secrets.token_hex(6)}.db"
        shutil.copyfile(self.template, target)
        return f"sqlite:///{target}"
