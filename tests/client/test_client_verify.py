"""`AuthkeepClient.verify_key` against the real app (both engines): answers, the local cache,
usage counted exactly once per call (CHK-AK-05), revocation seen within the cache TTL
(CHK-AK-04), and failing closed when authkeep cannot answer."""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from client_helpers import authkeep_client, counted_usage, no_key_in, revoke
from fastapi import FastAPI

from authkeep.client import AuthkeepClient, AuthkeepRejected, AuthkeepUnavailable, Outcome
from authkeep.config import Settings
from authkeep.keys.format import new_key
from keys.key_helpers import create_key
from support.apps import SqliteTemplates
from support.secrets_scan import FIGURES, SCAN
from users.identity_helpers import client_for, database, new_user, started_app


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_every_call_is_counted_once_at_the_server_cache_hits_included(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """CHK-AK-05: usage rows at the server == calls made through the client, whether the client
    answered from its cache or asked authkeep; units == the sum of the costs."""
    _, _, token = await new_user(client)
    plain = await create_key(client, token, permissions=["docs.read"])
    credited = await create_key(client, token, credits=1000)
    limited = await create_key(
        client, token, rate_limits=[{"name": "rpm", "limit": 1000, "window_seconds": 60}]
    )
    async with authkeep_client(app, cache_ttl=60, usage_flush_seconds=0.05) as authkeep:
        for _ in range(20):
            result = await authkeep.verify_key(plain["key"], permissions="docs.read", cost=2)
            assert (result.code, str(result.key_id)) == (Outcome.VALID, plain["id"])
        # 30 more at once: all answered from the cache.
        answers = await asyncio.gather(
            *(authkeep.verify_key(plain["key"], permissions="docs.read", cost=2) for _ in range(30))
        )
        assert all(a.valid and str(a.key_id) == plain["id"] for a in answers)
        # Keys with credits or rate limits are never answered from the cache: every call
        # reaches authkeep, which takes a credit or a unit each time.
        credits = [(await authkeep.verify_key(credited["key"])).credits_remaining for _ in range(5)]
        assert credits == [999, 998, 997, 996, 995]
        remaining = [
            (await authkeep.verify_key(limited["key"])).ratelimits[0].remaining for _ in range(5)
        ]
        assert remaining == [999, 998, 997, 996, 995]
        # The background loop reports the 49 cache hits without waiting for close.
        for _ in range(200):
            if authkeep.usage.reported == 49:
                break
            await asyncio.sleep(0.02)
        assert (authkeep.usage.reported, authkeep.usage.pending) == (49, 0)
    totals = await counted_usage(app, token)
    assert totals["by_outcome"] == {"VALID": 60}
    assert totals["count"] == 60
    assert totals["units"] == 50 * 2 + 5 + 5
    assert (await counted_usage(app, token, key_id=plain["id"]))["count"] == 50
    FIGURES.append(
        f"client cache: 60 calls (49 cache hits) -> 60 counted at the server, units exact "
        f"({database(app).engine.dialect.name})"
    )


async def test_hits_still_buffered_are_reported_on_close(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """CHK-AK-05: closing the client reports what the background loop has not sent yet."""
    _, _, token = await new_user(client)
    key = await create_key(client, token)
    async with authkeep_client(app, cache_ttl=60, usage_flush_seconds=3600) as authkeep:
        for _ in range(12):
            assert (await authkeep.verify_key(key["key"], cost=3)).valid
        assert (authkeep.usage.reported, authkeep.usage.pending) == (0, 11)
    assert (authkeep.usage.reported, authkeep.usage.pending) == (11, 0)
    totals = await counted_usage(app, token)
    assert (totals["count"], totals["units"]) == (12, 36)


async def test_a_malformed_key_is_not_found_without_asking_authkeep(closed_port: int) -> None:
    """A key with a bad shape or checksum never leaves the process: the client answers
    NOT_FOUND even with authkeep unreachable."""
    good = new_key("ak")
    broken = good[:-1] + ("A" if good[-1] != "A" else "B")
    async with AuthkeepClient(f"http://127.0.0.1:{closed_port}") as authkeep:
        for text in ["", "nope", broken, good + "x", "ak_" + "a" * 500]:
            result = await authkeep.verify_key(text)
            assert (result.valid, result.code, result.key_id) == (False, Outcome.NOT_FOUND, None)
        with pytest.raises(AuthkeepUnavailable):
            await authkeep.verify_key(good)


async def test_outcomes_other_than_valid_come_back_and_are_not_cached(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    _, _, token = await new_user(client)
    key = await create_key(client, token, permissions=["docs.read"])
    async with authkeep_client(app, cache_ttl=60) as authkeep:
        for _ in range(2):
            denied = await authkeep.verify_key(key["key"], permissions="docs.write")
            assert (denied.valid, denied.code) == (False, Outcome.INSUFFICIENT_PERMISSIONS)
        unknown = await authkeep.verify_key(new_key("ak"))
        assert (unknown.valid, unknown.code) == (False, Outcome.NOT_FOUND)
        allowed = await authkeep.verify_key(key["key"], permissions="docs.read or docs.write")
        assert allowed.valid
        assert allowed.permissions == ["docs.read"]
        assert (authkeep.usage.pending, len(authkeep.key_cache)) == (0, 1)
    totals = await counted_usage(app, token)
    assert totals["by_outcome"] == {"INSUFFICIENT_PERMISSIONS": 2, "VALID": 1}


async def test_a_malformed_permissions_expression_is_a_rejected_request(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    _, _, token = await new_user(client)
    key = await create_key(client, token)
    async with authkeep_client(app) as authkeep:
        with pytest.raises(AuthkeepRejected) as caught:
            await authkeep.verify_key(key["key"], permissions="docs.read and (")
    assert caught.value.status_code == 422
    assert caught.value.error == "invalid_permissions_expression"
    assert no_key_in(str(caught.value), key["key"])


async def test_a_revoked_key_is_refused_once_the_cache_ttl_has_passed(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """CHK-AK-04 at the client: a cached VALID answer lives at most `cache_ttl` seconds, so a
    revocation is seen within that bound; the stale hit is reported but authkeep refuses to
    count uses of a revoked key."""
    _, _, token = await new_user(client)
    key = await create_key(client, token)
    async with authkeep_client(app, cache_ttl=30, usage_flush_seconds=3600) as authkeep:
        clock = Clock()
        authkeep.key_cache.clock = clock
        assert (await authkeep.verify_key(key["key"])).valid
        await revoke(client, token, key["id"])
        clock.now += 29.9
        assert (await authkeep.verify_key(key["key"])).valid  # within the documented bound
        clock.now += 0.1
        after = await authkeep.verify_key(key["key"])
        assert (after.valid, after.code) == (False, Outcome.DISABLED)
    assert (authkeep.usage.reported, authkeep.usage.dropped) == (0, 1)
    totals = await counted_usage(app, token)
    assert totals["by_outcome"] == {"VALID": 1, "DISABLED": 1}


async def test_with_cache_ttl_zero_a_revocation_is_seen_at_once(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """CHK-AK-04: `cache_ttl=0` asks authkeep every time."""
    _, _, token = await new_user(client)
    key = await create_key(client, token)
    async with authkeep_client(app, cache_ttl=0) as authkeep:
        for _ in range(3):
            assert (await authkeep.verify_key(key["key"])).valid
        await revoke(client, token, key["id"])
        after = await authkeep.verify_key(key["key"])
        assert (after.valid, after.code) == (False, Outcome.DISABLED)
        assert (authkeep.usage.reported, len(authkeep.key_cache)) == (0, 0)
    totals = await counted_usage(app, token)
    assert totals["by_outcome"] == {"VALID": 3, "DISABLED": 1}


async def test_unreachable_authkeep_raises_unavailable_never_valid(
    closed_port: int, blackhole_port: int
) -> None:
    """Fail closed: connection refused and a server that never answers both raise
    `AuthkeepUnavailable`; the key is in neither the error nor the log."""
    key = SCAN.register(new_key("ak"))
    for port in (closed_port, blackhole_port):
        async with AuthkeepClient(f"http://127.0.0.1:{port}", timeout=0.3) as authkeep:
            with pytest.raises(AuthkeepUnavailable) as caught:
                await authkeep.verify_key(key)
            with pytest.raises(AuthkeepUnavailable):
                await authkeep.session("a-session-token")
        assert f"127.0.0.1:{port}" in str(caught.value)
        assert no_key_in(f"{caught.value!s} {caught.value!r} {caught.value.__cause__!r}", key)


async def test_a_password_in_the_base_url_stays_out_of_errors(closed_port: int) -> None:
    password = SCAN.register("base-url-pw-4f9c2")
    async with AuthkeepClient(f"http://app:{password}@127.0.0.1:{closed_port}") as authkeep:
        with pytest.raises(AuthkeepUnavailable) as caught:
            await authkeep.verify_key(new_key("ak"))
    assert f"http://127.0.0.1:{closed_port}" in str(caught.value)
    assert no_key_in(str(caught.value), password)


async def test_a_database_outage_at_authkeep_raises_unavailable(
    sqlite_templates: SqliteTemplates,
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Fail closed on a 5xx: authkeep answers 503 while its database cannot be opened."""
    source = (await sqlite_templates.fresh()).removeprefix("sqlite:///")
    folder = tmp_path / "db"
    folder.mkdir()
    shutil.copy(source, folder / "authkeep.db")
    url = f"sqlite:///{folder / 'authkeep.db'}"
    async with started_app(make_settings, url, key_cache_seconds=0) as app:
        async with client_for(app) as http:
            _, _, token = await new_user(http)
            key = await create_key(http, token)
        async with authkeep_client(app, cache_ttl=0) as authkeep:
            assert (await authkeep.verify_key(key["key"])).valid
            await database(app).engine.dispose()
            folder.rename(tmp_path / "db-gone")
            try:
                with caplog.at_level(logging.DEBUG), pytest.raises(AuthkeepUnavailable) as caught:
                    await authkeep.verify_key(key["key"])
            finally:
                (tmp_path / "db-gone").rename(folder)
    assert "HTTP 503" in str(caught.value)
    assert caught.value.retry_after is not None
    assert no_key_in(caplog.text + str(caught.value), key["key"])


async def test_more_hits_than_one_report_carries_are_split_and_all_counted(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """CHK-AK-05: a buffer larger than the server's per-report bound (100,000) goes out in
    several reports; the total and the units stay exact."""
    _, _, token = await new_user(client)
    key = await create_key(client, token)
    hits = 100_001
    async with authkeep_client(app, cache_ttl=60, usage_flush_seconds=3600) as authkeep:
        for n in range(hits):
            authkeep.usage.add(key["key"], 1 + n % 3)
    assert (authkeep.usage.reported, authkeep.usage.dropped) == (hits, 0)
    totals = await counted_usage(app, token)
    assert (totals["count"], totals["units"]) == (hits, sum(1 + n % 3 for n in range(hits)))


async def test_reports_refused_with_a_5xx_are_sent_again_and_counted_once(
    sqlite_templates: SqliteTemplates, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """CHK-AK-05: while authkeep answers 503 the hits stay buffered; the next report after it
    recovers counts them, once."""
    source = (await sqlite_templates.fresh()).removeprefix("sqlite:///")
    folder = tmp_path / "db"
    folder.mkdir()
    shutil.copy(source, folder / "authkeep.db")
    url = f"sqlite:///{folder / 'authkeep.db'}"
    # No server-side key cache: the report route must read the key, so the outage reaches it.
    async with started_app(make_settings, url, key_cache_seconds=0) as app:
        async with client_for(app) as http:
            _, _, token = await new_user(http)
            key = await create_key(http, token)
        async with authkeep_client(app, cache_ttl=60, usage_flush_seconds=3600) as authkeep:
            for _ in range(10):
                assert (await authkeep.verify_key(key["key"])).valid
            await app.state.meter.flush()
            await database(app).engine.dispose()
            folder.rename(tmp_path / "db-gone")
            try:
                await authkeep.usage.flush()
                failed = (authkeep.usage.reported, authkeep.usage.pending)
            finally:
                (tmp_path / "db-gone").rename(folder)
            await authkeep.usage.flush()
            assert failed == (0, 9)
            assert (authkeep.usage.reported, authkeep.usage.dropped) == (9, 0)
        totals = await counted_usage(app, token)
    assert totals["by_outcome"] == {"VALID": 10}
