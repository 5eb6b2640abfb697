"""A real PostgreSQL stopped under a running server (issue "Foundation", FI-DB-01, CHK-LG-04).

While the database is down `/health/db` answers 503 JSON with `Retry-After`; within 2 s of the
database coming back it answers 200 again; no request ever gets a 500.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from authkeep.config import load_settings
from authkeep.core import migrate
from authkeep.core.db import Database
from authkeep.core.dsn import candidates
from support.pgcluster import ThrowawayPostgres
from support.secrets_scan import FIGURES
from support.server import ServerProcess

DOWN_SECONDS = 3.0


async def _migrate(url: str) -> None:
    settings = load_settings(database_url=url)
    database = Database.open(candidates(settings)[0], settings)
    try:
        await migrate.upgrade(database.engine)
    finally:
        await database.dispose()


def _poll(client: httpx.Client, path: str, seen: list[tuple[float, int, httpx.Response]]) -> int:
    response = client.get(path)
    seen.append((time.monotonic(), response.status_code, response))
    return response.status_code


def test_health_db_goes_503_while_postgres_is_down_and_200_within_2s_after(tmp_path: Path):
    pg = ThrowawayPostgres(tmp_path / "pg", password="outage-Pw@1")
    pg.start()
    try:
        asyncio.run(_migrate(pg.url()))
        env = {"DATABASE_URL": pg.url(), "AUTHKEEP_HEALTH_DB_TIMEOUT": "1"}
        with (
            ServerProcess(tmp_path, env) as server,
            httpx.Client(base_url=server.url, timeout=5) as client,
        ):
            seen: list[tuple[float, int, httpx.Response]] = []
            assert _poll(client, "/health/db", seen) == 200

            pg.stop()
            down_until = time.monotonic() + DOWN_SECONDS
            while time.monotonic() < down_until:
                _poll(client, "/health/db", seen)
                _poll(client, "/api/health/db", seen)
                assert _poll(client, "/health", seen) == 200
                time.sleep(0.1)

            pg.start()
            back_at = time.monotonic()
            while _poll(client, "/health/db", seen) != 200:
                assert time.monotonic() - back_at < 10, "no recovery within 10 s"
                time.sleep(0.05)
            recovery = time.monotonic() - back_at
        down = [r for t, code, r in seen if code != 200]
        assert not [code for _, code, _ in seen if code >= 500 and code != 503], "got a 500"
        assert len(down) >= 10
        for response in down:
            assert response.status_code == 503
            assert response.headers["Retry-After"].isdigit()
            assert response.headers["Cache-Control"] == "no-store"
            body = response.json()
            assert body["error"] == "database_unavailable"
            assert "asyncpg" not in response.text
            assert "SELECT" not in response.text
        FIGURES.append(
            f"outage: {len(down)} x 503 while down {DOWN_SECONDS:.0f} s, 0 x 500, "
            f"200 again {recovery:.2f} s after PostgreSQL came back"
        )
        assert recovery < 2.0, f"took {recovery:.2f}s to recover"
    finally:
        pg.cleanup()
