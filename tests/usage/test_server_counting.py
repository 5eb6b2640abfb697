"""Usage durability with a real `authkeep serve` process under verify load (RELIABILITY
FI-DB-10, CHK-AK-05), on SQLite and on PostgreSQL.

16 concurrent clients call `POST /api/keys/verify` and keep a ledger of acknowledged calls
(HTTP 200, VALID). Mid-load the server gets a signal; once it has exited, the ledger is
compared with `usage_rollups`:
- SIGTERM (graceful shutdown, the meter's final flush): stored == acknowledged, exactly, in the
  hour rows and in the day rows (0 lost, 0 double).
- SIGKILL (crash): the meter is write-behind, so what was counted since the last flush is lost.
  That loss is reported as a figure next to the flush interval and the rate; the test asserts
  the invariants that must hold: nothing counted twice (stored never exceeds acknowledged plus
  the calls in flight at the kill) and hour rows == day rows (each flush writes both at once).
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from usage_helpers import eventually, last_used, total_count

from authkeep.config import load_settings
from authkeep.core.db import Database
from authkeep.core.dsn import candidates
from keys.key_helpers import create_key
from support.secrets_scan import FIGURES, SCAN
from support.server import ServerProcess
from users.identity_helpers import new_user

CLIENTS = 16
FLUSH_SECONDS = 1.0
# Load before the signal: a few flush intervals.
LOAD_SECONDS = 2.5
VERIFY = "/api/keys/verify"


@dataclass
class Ledger:
    acknowledged: int = 0
    # Sent on an open connection, no answer (the server went away): maybe counted, maybe not.
    unanswered: int = 0
    other: Counter[str] = field(default_factory=Counter)


def engine_of(url: str) -> str:
    return "sqlite" if url.startswith("sqlite") else "postgresql"


def server_for(tmp_path: Path, url: str) -> ServerProcess:
    secret = SCAN.register(secrets.token_urlsafe(48))
    return ServerProcess(
        tmp_path,
        {
            "DATABASE_URL": url,
            "AUTHKEEP_SECRET_KEY": secret,
            "AUTHKEEP_DATA_DIR": str(tmp_path / "data"),
            "AUTHKEEP_USAGE_FLUSH_SECONDS": str(FLUSH_SECONDS),
        },
    )


async def issue_key(client: httpx.AsyncClient) -> tuple[str, uuid.UUID]:
    """A user and a key with no limits, made through the server's HTTP API."""
    _, _, token = await new_user(client)
    created = await create_key(client, token, name="load")
    return created["key"], uuid.UUID(created["id"])


async def caller(client: httpx.AsyncClient, key: str, ledger: Ledger, done: asyncio.Event) -> None:
    while not done.is_set():
        try:
            response = await client.post(VERIFY, headers={"X-API-Key": key}, json={})
        except httpx.ConnectError:
            await asyncio.sleep(0.01)  # nobody listening: the call never reached the server
            continue
        except httpx.HTTPError:
            ledger.unanswered += 1
            continue
        if response.status_code == 200 and response.json()["code"] == "VALID":
            ledger.acknowledged += 1
        else:
            ledger.other[f"{response.status_code} {response.text[:60]}"] += 1


async def load_then_signal(
    server: ServerProcess, key: str, sig: signal.Signals, database: Database
) -> tuple[Ledger, float, float]:
    """Drive verify load, send `sig` mid-load, keep calling until the process is gone.
    Returns the ledger, the load duration before the signal and the seconds to exit."""
    ledger = Ledger()
    done = asyncio.Event()
    process = server.process
    assert process is not None
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=server.url, timeout=10, limits=limits) as client:
        loop = asyncio.get_running_loop()
        callers = [asyncio.create_task(caller(client, key, ledger, done)) for _ in range(CLIENTS)]
        began = loop.time()
        await asyncio.sleep(LOAD_SECONDS)
        # Kill only once a flush has written something: the crash then lands between flushes.
        await eventually(lambda: stored_any(database))
        loaded = loop.time() - began
        signalled = loop.time()
        process.send_signal(sig)
        await asyncio.to_thread(process.wait, 60)
        exit_seconds = loop.time() - signalled
        done.set()
        await asyncio.gather(*callers)
    server.output()
    return ledger, loaded, exit_seconds


async def stored_any(database: Database) -> bool:
    return await total_count(database, "hour") > 0


def open_database(url: str) -> Database:
    settings = load_settings(database_url=url)
    return Database.open(candidates(settings)[0], settings)


async def run_scenario(
    tmp_path: Path, url: str, sig: signal.Signals
) -> tuple[Ledger, int, int, float, float, uuid.UUID, Database]:
    server = server_for(tmp_path, url)
    await asyncio.to_thread(server.start)
    database = open_database(url)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            key, key_id = await issue_key(client)
        ledger, loaded, exit_seconds = await load_then_signal(server, key, sig, database)
        hour = await total_count(database, "hour")
        day = await total_count(database, "day")
    except BaseException:
        server.__exit__()
        await database.dispose()
        raise
    return ledger, hour, day, loaded, exit_seconds, key_id, database


async def test_sigterm_mid_load_loses_nothing_and_counts_nothing_twice_FI_DB_10(
    tmp_path: Path, migrated_url: str
) -> None:
    ledger, hour, day, loaded, drain, key_id, database = await run_scenario(
        tmp_path, migrated_url, signal.SIGTERM
    )
    try:
        used = await last_used(database, key_id)
    finally:
        await database.dispose()
    rate = ledger.acknowledged / loaded
    FIGURES.append(
        f"FI-DB-10 {engine_of(migrated_url)} SIGTERM: acknowledged {ledger.acknowledged}, "
        f"stored hour {hour} / day {day}, lost {ledger.acknowledged - hour}, "
        f"double {max(0, hour - ledger.acknowledged)}, unanswered {ledger.unanswered}, "
        f"~{rate:.0f} verifications/s from {CLIENTS} clients, drain (signal to exit) {drain:.2f} s"
    )
    assert not ledger.other, ledger.other
    assert ledger.acknowledged > 0
    assert hour == day == ledger.acknowledged
    assert used is not None


async def test_sigkill_mid_load_loses_at_most_the_unflushed_counts_FI_DB_10(
    tmp_path: Path, migrated_url: str
) -> None:
    ledger, hour, day, loaded, _, _, database = await run_scenario(
        tmp_path, migrated_url, signal.SIGKILL
    )
    await database.dispose()
    rate = ledger.acknowledged / loaded
    lost = ledger.acknowledged - hour
    FIGURES.append(
        f"FI-DB-10 {engine_of(migrated_url)} SIGKILL: flush interval {FLUSH_SECONDS:.1f} s, "
        f"~{rate:.0f} verifications/s, acknowledged {ledger.acknowledged}, stored {hour}, "
        f"lost {lost} (= {lost / rate:.2f} s of traffic), unanswered at kill {ledger.unanswered}"
    )
    assert not ledger.other, ledger.other
    assert hour == day  # a flush writes hour and day rows in one unit of work
    assert 0 < hour <= ledger.acknowledged + ledger.unanswered  # never counted twice
