"""The verify cache: a hit costs no database round trip, a change is seen on the next call, a
load that was in flight during a change does not bring the old state back (SPEC §7,
RELIABILITY CHK-AK-04, FI-RACE-05), and `CurrentKey` for routes that take an API key."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import time_machine
from fastapi import FastAPI
from sqlalchemy import delete, event, update
from verify_helpers import (
    VERIFY,
    IssuedKey,
    change_key,
    change_user,
    make_key,
    make_plan,
    revoke,
    statements,
    subscribe,
    verify,
)

from authkeep.config import load_settings
from authkeep.core.db import Database
from authkeep.core.dsn import candidates
from authkeep.core.models import utcnow
from authkeep.keys.cache import invalidations_for, key_cache_for
from authkeep.keys.deps import CurrentKey
from authkeep.keys.format import new_key
from authkeep.keys.models import ApiKey
from support.secrets_scan import FIGURES, SCAN
from users.identity_helpers import bearer, client_for, database, new_user, started_app

RACE_CALLS = 50
BEFORE_REVOKE = 20
AFTER_COMMIT = 10
RACE_TRIALS = 3


async def test_a_cache_hit_touches_no_database(app: FastAPI, client: httpx.AsyncClient) -> None:
    """SPEC §7: the first call reads the key (reads only); later calls for a key without
    credits — rate limits, permissions and an unmetered feature included — run no statement
    and take no connection."""
    owner_plan = await make_plan(app, ["api", "exports"], {"exports": 5})
    issued = await make_key(
        app,
        permissions=["documents.*"],
        rate_limits=[{"name": "requests", "limit": 100, "window_seconds": 60}],
    )
    await subscribe(app, issued.user_id, owner_plan)
    body = {"permissions": "documents.read", "feature": "api"}
    with statements(app) as miss:
        assert (await verify(client, issued.key, body))["code"] == "VALID"
    assert miss.statements
    assert miss.writes() == []
    for _ in range(3):
        with statements(app) as hit:
            result = await verify(client, issued.key, body)
        assert result["code"] == "VALID"
        assert hit.statements == []
        assert hit.checkouts == 0
    assert result["ratelimits"][0]["remaining"] == 96


async def test_credits_cost_one_statement_per_call(app: FastAPI, client: httpx.AsyncClient) -> None:
    """CHK-AC-08: with credits, a cached key costs exactly one statement: the conditional
    UPDATE … RETURNING that checks and takes them."""
    issued = await make_key(app, credits_remaining=10)
    await verify(client, issued.key)
    for left in (8, 7):
        with statements(app) as log:
            result = await verify(client, issued.key)
        assert result["credits_remaining"] == left
        assert len(log.statements) == 1
        assert log.statements[0].lstrip().upper().startswith("UPDATE API_KEYS")
        assert "RETURNING" in log.statements[0].upper()


async def test_expiry_is_checked_on_every_hit(app: FastAPI, client: httpx.AsyncClient) -> None:
    """The cache never outlives the key: past `expires_at`, a cached key is EXPIRED at once
    (the wall clock is checked on every call; the cache's own TTL has not run out)."""
    expires = utcnow() + timedelta(minutes=5)
    issued = await make_key(app, expires_at=expires)
    assert (await verify(client, issued.key))["code"] == "VALID"
    with time_machine.travel(expires - timedelta(seconds=1), tick=False):
        assert (await verify(client, issued.key))["code"] == "VALID"
    with time_machine.travel(expires, tick=False), statements(app) as log:
        assert (await verify(client, issued.key))["code"] == "EXPIRED"
    assert log.statements == []


async def test_each_change_is_seen_on_the_next_call(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """A change to the key or its owner, committed and announced the way the CRUD does it,
    decides the very next verification — no waiting for the cache TTL."""
    issued = await make_key(app, permissions=["a"])
    assert (await verify(client, issued.key, {"permissions": "a"}))["code"] == "VALID"
    await change_key(app, issued.key_id, permissions=["b"])
    assert (await verify(client, issued.key, {"permissions": "a"}))["code"] == (
        "INSUFFICIENT_PERMISSIONS"
    )
    await change_key(app, issued.key_id, enabled=False)
    assert (await verify(client, issued.key))["code"] == "DISABLED"
    await change_key(app, issued.key_id, enabled=True)
    assert (await verify(client, issued.key))["code"] == "VALID"
    await change_user(app, issued.user_id, disabled_at=utcnow())
    assert (await verify(client, issued.key))["code"] == "FORBIDDEN"
    await change_user(app, issued.user_id, disabled_at=None)
    assert (await verify(client, issued.key))["code"] == "VALID"
    await revoke(app, issued.key_id)
    assert (await verify(client, issued.key))["code"] == "DISABLED"
    async with database(app).session_scope() as db:
        await db.execute(delete(ApiKey).where(ApiKey.id == issued.key_id))
        await db.commit()
        await invalidations_for(app).key_changed(issued.key_id)
    assert (await verify(client, issued.key))["code"] == "NOT_FOUND"


async def test_revoke_reroll_and_delete_through_the_api(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """End to end with the key routes: a revoked key is DISABLED on the next call; a rerolled
    key keeps working through its grace period (then EXPIRED) while the new key works; a
    deleted key is NOT_FOUND."""
    _email, _password, token = await new_user(client)

    async def create() -> dict[str, Any]:
        response = await client.post("/api/keys", json={"name": "k"}, headers=bearer(token))
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        SCAN.register(body["key"])
        return body

    revoked, rerolled, deleted = await create(), await create(), await create()
    for created in (revoked, rerolled, deleted):
        assert (await verify(client, created["key"]))["code"] == "VALID"

    response = await client.post(f"/api/keys/{revoked['id']}/revoke", headers=bearer(token))
    assert response.status_code == 200, response.text
    assert (await verify(client, revoked["key"]))["code"] == "DISABLED"

    response = await client.post(
        f"/api/keys/{rerolled['id']}/reroll", json={"grace_seconds": 60}, headers=bearer(token)
    )
    assert response.status_code == 201, response.text
    replacement = SCAN.register(response.json()["key"])
    assert (await verify(client, rerolled["key"]))["code"] == "VALID"
    assert (await verify(client, replacement))["code"] == "VALID"
    with time_machine.travel(utcnow() + timedelta(seconds=61), tick=False):
        assert (await verify(client, rerolled["key"]))["code"] == "EXPIRED"
        assert (await verify(client, replacement))["code"] == "VALID"

    response = await client.delete(f"/api/keys/{deleted['id']}", headers=bearer(token))
    assert response.status_code == 204, response.text
    assert (await verify(client, deleted["key"]))["code"] == "NOT_FOUND"


async def test_a_load_in_flight_during_an_invalidation_is_not_cached(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """FI-RACE-05, made deterministic: an invalidation arrives while a cache miss is reading
    the key. The reader answers from what it read, but does not store it — otherwise the
    state from before the change would be served until the TTL ran out."""
    cache = key_cache_for(app)
    issued = await make_key(app)
    engine = database(app).engine.sync_engine

    def invalidate_during_read(_c: Any, _cur: Any, statement: str, *_a: Any) -> None:
        if "FROM api_keys" in statement and statement.lstrip().upper().startswith("SELECT"):
            cache.drop_key(issued.key_id)

    event.listen(engine, "after_cursor_execute", invalidate_during_read)
    try:
        assert (await verify(client, issued.key))["code"] == "VALID"
    finally:
        event.remove(engine, "after_cursor_execute", invalidate_during_read)
    assert len(cache) == 0
    assert (await verify(client, issued.key))["code"] == "VALID"
    assert len(cache) == 1


@dataclass
class RevokeTrial:
    """One key revoked while verifications of it run; who started after the commit."""

    app: FastAPI
    client: httpx.AsyncClient
    key: IssuedKey
    committed: bool = False
    revoking: asyncio.Event = field(default_factory=asyncio.Event)
    commit_returned: asyncio.Event = field(default_factory=asyncio.Event)
    revoke_seconds: float = 0.0

    async def call(self, delay: float, starts: asyncio.Event | None) -> tuple[bool, str]:
        if starts is not None:
            await starts.wait()
        await asyncio.sleep(delay)
        started_after_commit = self.committed
        return started_after_commit, (await verify(self.client, self.key.key))["code"]

    async def revoke(self) -> None:
        """As the key routes do it: commit, then invalidate. `committed` flips the moment
        the commit has returned."""
        await asyncio.sleep(0.005)
        self.revoking.set()
        began = time.monotonic()
        async with database(self.app).session_scope() as db:
            await db.execute(
                update(ApiKey).where(ApiKey.id == self.key.key_id).values(revoked_at=utcnow())
            )
            await db.commit()
            self.committed = True
            self.commit_returned.set()
            await invalidations_for(self.app).key_changed(self.key.key_id)
        self.revoke_seconds = time.monotonic() - began

    async def run(self, spread: float) -> list[tuple[bool, str]]:
        """Calls that start just before the revoke, calls spread over its duration, and
        AFTER_COMMIT calls that start right as the commit returns (before the invalidation
        has run, if anything lets them)."""
        during = RACE_CALLS - BEFORE_REVOKE - AFTER_COMMIT
        calls = [self.call(random.uniform(0, 0.01), None) for _ in range(BEFORE_REVOKE)]
        calls += [self.call(random.uniform(0, spread), self.revoking) for _ in range(during)]
        calls += [self.call(0, self.commit_returned) for _ in range(AFTER_COMMIT)]
        outcomes, _ = await asyncio.gather(asyncio.gather(*calls), self.revoke())
        return list(outcomes)


async def test_revoke_while_verifications_are_in_flight(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """FI-RACE-05: revoke a key while 50 verifications run, some reading the key from the
    database at that moment, some from the cache. Every verification that started after the
    revoke committed answers DISABLED: 0 VALID after the commit, on each trial."""
    started_after = valid_after = 0
    # How long a revoke takes, learnt from the previous trial, so calls spread over it.
    revoke_seconds = 0.02
    for _trial in range(RACE_TRIALS):
        trial = RevokeTrial(app, client, await make_key(app))
        assert (await verify(client, trial.key.key))["code"] == "VALID"
        key_cache_for(app).clear()  # the first wave misses and loads while the revoke runs
        outcomes = await trial.run(spread=1.5 * revoke_seconds)
        revoke_seconds = trial.revoke_seconds
        after = [code for was_after, code in outcomes if was_after]
        started_after += len(after)
        valid_after += after.count("VALID")
        assert after.count("VALID") == 0, outcomes
        assert set(after) <= {"DISABLED"}
    engine = database(app).engine.dialect.name
    FIGURES.append(
        f"FI-RACE-05 {engine}: {RACE_TRIALS} trials x {RACE_CALLS} verifications around a "
        f"revoke: {started_after} started after the commit, {valid_after} VALID among them"
    )
    assert started_after >= RACE_TRIALS * AFTER_COMMIT


async def test_without_the_database_only_what_needs_it_fails(
    app: FastAPI, client: httpx.AsyncClient, closed_port: int
) -> None:
    """The database gone (nothing listens on its port): malformed keys and cached keys
    without credits still answer; anything that must read or charge answers 503 — never a
    VALID it could not check (CHK-AC-07 fail closed)."""
    cached = await make_key(app)
    with_credits = await make_key(app, credits_remaining=5)
    for issued in (cached, with_credits):
        assert (await verify(client, issued.key))["code"] == "VALID"
    unknown = SCAN.register(new_key("ak"))
    settings = load_settings(
        database_url=f"postgresql://nobody@127.0.0.1:{closed_port}/gone", db_pool_timeout=1
    )
    gone = Database.open(candidates(settings)[0], settings)
    # Swapped by hand, not with monkeypatch: the app's own shutdown must close the real one.
    real, app.state.database = app.state.database, gone
    try:
        assert (await verify(client, cached.key[:-1]))["code"] == "NOT_FOUND"
        assert (await verify(client, cached.key))["code"] == "VALID"
        for key in (with_credits.key, unknown):
            response = await client.post(VERIFY, headers={"x-api-key": key})
            SCAN.record("verify outage", response.text)
            assert response.status_code == 503
            assert response.json()["error"] == "database_unavailable"
    finally:
        app.state.database = real
        await gone.dispose()


async def test_current_key_authenticates_a_route(app: FastAPI, client: httpx.AsyncClient) -> None:
    """`CurrentKey`: a usable key passes (401 otherwise), from the same headers as verify."""

    async def whoami(key: CurrentKey) -> dict[str, str]:
        return {"key_id": str(key.key_id), "owner": key.owner}

    app.add_api_route("/test/whoami", whoami, methods=["GET"])
    good = await make_key(app, external_id="acme")
    expired = await make_key(app, expires_at=utcnow() - timedelta(seconds=1))
    revoked_key = await make_key(app, revoked_at=utcnow())
    blocked = await make_key(app)
    await change_user(app, blocked.user_id, disabled_at=utcnow())

    for headers in ({"x-api-key": good.key}, {"authorization": f"Bearer {good.key}"}):
        response = await client.get("/test/whoami", headers=headers)
        assert response.status_code == 200
        assert response.json() == {"key_id": str(good.key_id), "owner": "acme"}

    response = await client.get("/test/whoami")
    assert (response.status_code, response.json()["error"]) == (401, "missing_api_key")
    for refused in (good.key[:-1], expired.key, revoked_key.key, blocked.key):
        response = await client.get("/test/whoami", headers={"x-api-key": refused})
        SCAN.record("CurrentKey refusal", response.text)
        assert (response.status_code, response.json()["error"]) == (401, "invalid_api_key")
        assert refused not in response.text


async def test_without_a_cache_every_call_reads_the_database(
    migrated_url: str, make_settings: Any
) -> None:
    """AUTHKEEP_KEY_CACHE_SECONDS=0: nothing is cached, each call reads the key afresh."""
    async with (
        started_app(make_settings, migrated_url, key_cache_seconds=0) as app,
        client_for(app) as client,
    ):
        issued = await make_key(app)
        for _ in range(2):
            with statements(app) as log:
                assert (await verify(client, issued.key))["code"] == "VALID"
            assert log.statements
        assert len(key_cache_for(app)) == 0
        await revoke(app, issued.key_id)
        assert (await verify(client, issued.key))["code"] == "DISABLED"
