"""Shared by the backup, restore and copy tests: running the CLI, choosing the PostgreSQL client
tools that match the server under test, and writing real rows through the services.

Which pg_dump/pg_restore: the suite's throwaway server is pgserver's PostgreSQL 16, whose tools
are in `pg_cluster.bin_dir`; with AUTHKEEP_TEST_DATABASE_URL the server may be another version
(CI also runs the system PostgreSQL 15, whose tools are in /usr/lib/postgresql/15/bin). So the
tools are chosen by asking the server under test for its version and taking the first directory
whose pg_dump has that major version (pgserver's, Debian's per-version directory, then PATH).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
import subprocess
import threading
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest
from sqlalchemy import func, insert, select
from typer.testing import CliRunner, Result

from authkeep.audit import service as audit
from authkeep.cli import app
from authkeep.config import load_settings
from authkeep.core.db import Database
from authkeep.core.dsn import candidates
from authkeep.core.models import utcnow
from authkeep.sessions import service as sessions
from authkeep.sessions.models import Session
from authkeep.users import one_time
from authkeep.users.models import User
from support.pgcluster import _find_bin_dir
from support.secrets_scan import SCAN

runner = CliRunner()
T = TypeVar("T")


def invoke(*args: str, env: dict[str, str]) -> Result:
    """Run `authkeep …` as a user would; its output joins the suite's secret scan.

    The command installs its log handler on CliRunner's stderr, which is closed afterwards: the
    root logger's handlers and level are put back so later tests do not log into a closed file.
    """
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        result = runner.invoke(app, list(args), env=env)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    SCAN.record(f"cli:{' '.join(args[:2])}", result.output)
    return result


def body(result: Result) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def _major(pg_dump: Path) -> int | None:
    try:
        out = subprocess.run([str(pg_dump), "--version"], capture_output=True, text=True).stdout
    except OSError:
        return None
    match = re.search(r"(\d+)", out)
    return int(match.group(1)) if match else None


def server_major(url: str) -> int:
    """The major version of the server at `url` (works inside or outside a running loop)."""

    async def ask() -> int:
        conn = await asyncpg.connect(url)
        try:
            return int(await conn.fetchval("SHOW server_version_num")) // 10_000
        finally:
            await conn.close()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, ask()).result()


def tools_for(major: int) -> Path:
    """The first directory whose pg_dump is exactly `major` (see module doc)."""
    on_path = shutil.which("pg_dump")
    options = [
        _find_bin_dir(),
        Path(f"/usr/lib/postgresql/{major}/bin"),
        *([Path(on_path).parent] if on_path else []),
    ]
    for directory in options:
        if (directory / "pg_dump").is_file() and _major(directory / "pg_dump") == major:
            return directory
    raise RuntimeError(
        f"No PostgreSQL {major} client tools for the server under test: install "
        f"postgresql-client-{major} (apt-get install postgresql-client-{major})."
    )


@pytest.fixture
def pg_bin(postgres_admin_url: str) -> Path:
    """The client tools matching the PostgreSQL under test (module doc)."""
    return tools_for(server_major(postgres_admin_url))


def open_database(url: str) -> Database:
    settings = load_settings(database_url=url)
    return Database.open(candidates(settings)[0], settings)


def on_database(url: str, work: Callable[[Database], Awaitable[T]]) -> T:
    """Open the database, run `work` on it and dispose of it, in one event loop of its own."""

    async def run() -> T:
        database = open_database(url)
        try:
            return await work(database)
        finally:
            await database.dispose()

    return asyncio.run(run())


def user_count(url: str) -> int:
    return on_database(url, lambda database: count(database, User))


async def count(database: Database, model: type[Any]) -> int:
    async with database.session_scope() as db:
        return int(await db.scalar(select(func.count()).select_from(model)) or 0)


async def seed_bulk(database: Database, users: int, *, sessions_per_user: int = 1) -> None:
    """Many rows fast (Core executemany): users, their sessions and audit rows."""
    now = utcnow()
    user_rows = [
        {
            "id": uuid.uuid4(),
            "email": f"bulk{i}-{uuid.uuid4().hex[:6]}@example.com",
            "name": f"Bulk {i}",
            "created_at": now,
            "updated_at": now,
            "role": "user",
        }
        for i in range(users)
    ]
    session_rows = [
        {
            "id": uuid.uuid4(),
            "user_id": row["id"],
            "token_hash": uuid.uuid4().hex * 2,
            "created_at": now,
            "authenticated_at": now,
            "last_seen_at": now,
            "expires_at": now + timedelta(hours=12),
            "ip": "192.0.2.1",
            "user_agent": "bulk",
        }
        for row in user_rows
        for _ in range(sessions_per_user)
    ]
    async with database.session_scope() as db:
        await db.execute(insert(User), user_rows)
        if session_rows:
            await db.execute(insert(Session), session_rows)


async def seed_identity(database: Database, users: int) -> None:
    """Users with sessions, audit rows carrying JSON, and one-time tokens, via the services."""
    settings = load_settings()
    async with database.session_scope() as db:
        for i in range(users):
            user = User(
                email=f"user{i}@example.com",
                name=None if i % 3 else f"Ünïcode {i}",
                email_verified_at=utcnow() if i % 2 else None,
                password_reset_required=i % 5 == 0,
            )
            db.add(user)
            await db.flush()
            await sessions.create(db, user, settings, ip="2001:db8::1", user_agent="tests/1.0")
            await one_time.issue(db, one_time.VERIFY_EMAIL, timedelta(hours=1), user.id)
            await audit.record(
                db,
                "sign_in",
                "success",
                actor_id=user.id,
                actor=user.email,
                detail={
                    "n": i,
                    "ratio": i / 7,
                    "ok": i % 2 == 0,
                    "none": None,
                    "nested": {"list": [1, "two", 3.5], "text": 'snow ☃ "quoted"'},
                },
            )


class Writer:
    """Inserts users one transaction at a time on its own thread and loop until stopped:
    the write load a backup runs under."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.written = 0
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._started = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        database = open_database(self.url)
        try:
            while not self._stop.is_set():
                async with database.session_scope() as db:
                    db.add(User(email=f"load-{uuid.uuid4().hex}@example.com"))
                self.written += 1
                self._started.set()
                await asyncio.sleep(0.002)
        except BaseException as exc:
            self.errors.append(exc)
            self._started.set()
        finally:
            await database.dispose()

    def __enter__(self) -> Writer:
        self._thread.start()
        self._started.wait(30)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


def env_for(url: str, data_dir: Path, **extra: str) -> dict[str, str]:
    return {"DATABASE_URL": url, "AUTHKEEP_DATA_DIR": str(data_dir), **extra}
