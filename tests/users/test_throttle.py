"""Brute-force limits (CHK-BF-01/05/07, BI-08, FI-RACE-03, FI-DOS-01): the per-account
ceiling, which only a reset lifts and a success clears; the per-network sliding window keyed
by the trusted client IP (IPv6 by /64); and the ceiling under concurrency."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from fastapi import FastAPI
from identity_helpers import (
    audit_rows,
    cheap_hashing,
    client_for,
    database,
    new_email,
    new_user,
    sign_in,
    started_app,
    strong_password,
    user_row,
)

from authkeep.core.ratelimit import MemoryRateLimiter, limiter_for
from authkeep.core.security import PasswordHashing
from authkeep.users import service as users
from authkeep.users.passwords import hash_password
from support.secrets_scan import FIGURES

PROXY = ["127.0.0.1/32"]


async def failure_reasons(app: FastAPI) -> Counter[str]:
    return Counter(
        str((e.detail or {}).get("reason"))
        for e in await audit_rows(app, "auth.sign_in")
        if e.outcome == "failure"
    )


def via(ip: str) -> dict[str, str]:
    return {"X-Forwarded-For": ip}


async def test_100_failures_from_100_networks_lock_the_account_until_reset_CHK_BF_01(
    migrated_url: str, make_settings
):
    async with (
        started_app(make_settings, migrated_url, trusted_proxies=PROXY) as app,
        client_for(app) as client,
    ):
        email, password, _token = await new_user(client)
        client.cookies.clear()
        for i in range(100):
            wrong = await sign_in(client, email, strong_password(), headers=via(f"10.1.{i}.7"))
            assert wrong.status_code == 401
        refused = await sign_in(client, email, password, headers=via("192.0.2.200"))
        assert (refused.status_code, refused.json()["error"]) == (401, "invalid_credentials")
        assert (await user_row(app, email)).failed_login_count == 101
        reasons = await failure_reasons(app)
        assert reasons == {"wrong_password": 100, "locked": 1}
        assert (
            len({e.ip for e in await audit_rows(app, "auth.sign_in")}) == 102
        )  # + new_user's own sign-in

        # CHK-BF-03: the owner's reset lifts the lock at once.
        user = await user_row(app, email)
        new_password = strong_password()
        new_hash = await hash_password(app.state.passwords, new_password)
        async with database(app).session_scope() as db:
            await users.set_password(db, user.id, new_hash)
        assert (
            await sign_in(client, email, new_password, headers=via("192.0.2.201"))
        ).status_code == 200


async def test_a_success_clears_the_count_CHK_BF_05(migrated_url: str, make_settings):
    """99 failures, 1 success, 99 failures: the account is not locked (ceiling 100)."""
    async with (
        started_app(make_settings, migrated_url, login_ip_failures_per_minute=10_000) as app,
        client_for(app) as client,
    ):
        email, password, _token = await new_user(client)
        client.cookies.clear()
        for round_ in range(2):
            for _ in range(99):
                assert (await sign_in(client, email, "not the password at all")).status_code == 401
            assert (await user_row(app, email)).failed_login_count == 99
            client.cookies.clear()
            assert (await sign_in(client, email, password)).status_code == 200, round_
            assert (await user_row(app, email)).failed_login_count == 0


async def test_network_limit_counts_failures_only_and_answers_429(app: FastAPI):
    """Default 20 failures per minute per network: the 21st is 429 with Retry-After, without
    any argon2 work, and audited as throttled. Correct passwords do not use up the budget."""
    limit = app.state.settings.login_ip_failures_per_minute
    async with client_for(app) as client:
        email, password, _token = await new_user(client)
        for _ in range(limit + 5):
            client.cookies.clear()
            assert (await sign_in(client, email, password)).status_code == 200
        for _ in range(limit):
            assert (await sign_in(client, new_email(), "wrong wrong wrong")).status_code == 401
        hashing = app.state.passwords
        before = hashing.verify_calls
        throttled = await sign_in(client, email, password)
        assert (throttled.status_code, throttled.json()["error"]) == (429, "rate_limited")
        assert 1 <= int(throttled.headers["Retry-After"]) <= 60
        assert hashing.verify_calls == before
        # Another network is not affected.
        async with client_for(app, ip="198.51.100.9") as other:
            assert (await sign_in(other, email, password)).status_code == 200
    outcomes = Counter(e.outcome for e in await audit_rows(app, "auth.sign_in"))
    assert outcomes["throttled"] == 1


async def test_spoofed_forwarded_for_from_an_untrusted_peer_is_one_bucket_CHK_BF_07_BI_08(
    app: FastAPI,
):
    """1,000 distinct X-Forwarded-For values from a peer that is not a trusted proxy: all in
    the peer's one bucket, so all but the first 20 are throttled."""
    statuses: Counter[int] = Counter()
    async with client_for(app, ip="203.0.113.5") as client:
        for i in range(1000):
            response = await client.post(
                "/api/auth/sign-in",
                json={"email": "nobody@example.com", "password": "guess guess guess"},
                headers=via(f"10.{i // 256}.{i % 256}.1"),
            )
            statuses[response.status_code] += 1
    limiter = limiter_for(app)
    assert isinstance(limiter, MemoryRateLimiter)
    assert len(limiter) == 1
    assert statuses == {401: 20, 429: 980}
    FIGURES.append("BI-08 untrusted XFF: 1,000 spoofed values -> 1 limiter bucket, 980 x 429")


async def test_ipv6_rotation_inside_a_64_is_one_bucket_BI_08(migrated_url: str, make_settings):
    """Through a trusted proxy, clients rotating addresses (and spellings) inside one IPv6 /64
    share one bucket; another /64 has its own."""
    async with started_app(make_settings, migrated_url, trusted_proxies=PROXY) as app:
        async with client_for(app) as client:
            statuses = []
            for i in range(30):
                address = f"2001:db8:aa:bb:{i:x}::{i + 1:x}"
                if i % 3 == 1:
                    address = address.upper()
                elif i % 3 == 2:
                    address = f"2001:0db8:00aa:00bb:{i:04x}:0:0:{i + 1:x}"
                response = await sign_in(
                    client, "nobody@example.com", "guess guess guess", headers=via(address)
                )
                statuses.append(response.status_code)
            assert statuses.count(401) == 20
            assert statuses.count(429) == 10
            other = await sign_in(
                client, "nobody@example.com", "guess guess", headers=via("2001:db8:aa:cc::1")
            )
            assert other.status_code == 401
        limiter = limiter_for(app)
        assert isinstance(limiter, MemoryRateLimiter)
        assert len(limiter) == 2


@pytest.mark.timeout(240)
async def test_200_concurrent_wrong_passwords_are_all_counted_FI_RACE_03(
    migrated_url: str, make_settings
):
    """200 wrong passwords at once: failed_login_count ends at exactly 200 (no lost update), and
    exactly `login_max_failures` (100) of them were judged against the real hash — the rest were
    refused as locked. Uses test-only argon2 parameters (1 MiB, t=1) via a cheap
    `app.state.passwords`, so 200 hashes finish quickly; the hashing queue admits all 200."""
    async with started_app(make_settings, migrated_url, login_ip_failures_per_minute=10_000) as app:
        app.state.passwords.close()
        app.state.passwords = cheap_hashing(queue_limit=256)
        async with client_for(app) as client:
            email, _password, _token = await new_user(client)
            client.cookies.clear()
            gate = asyncio.Event()

            async def attempt() -> int:
                await gate.wait()
                response = await client.post(
                    "/api/auth/sign-in", json={"email": email, "password": "wrong wrong wrong"}
                )
                return response.status_code

            tasks = [asyncio.create_task(attempt()) for _ in range(200)]
            await asyncio.sleep(0)
            gate.set()
            statuses = await asyncio.gather(*tasks)
        assert Counter(statuses) == {401: 200}
        assert (await user_row(app, email)).failed_login_count == 200
        reasons = await failure_reasons(app)
        assert reasons == {"wrong_password": 100, "locked": 100}
        engine = "sqlite" if migrated_url.startswith("sqlite") else "postgresql"
        FIGURES.append(
            f"FI-RACE-03 {engine}: 200 concurrent wrong passwords -> count 200, "
            f"judged 100, refused as locked 100"
        )


async def test_hashing_overload_answers_503_and_counts_nothing_FI_DOS_01(
    migrated_url: str, make_settings
):
    """With one hashing thread and a queue of 2, a burst gets 503 + Retry-After for the
    excess; attempts that were never judged are not counted against the account."""
    async with started_app(make_settings, migrated_url, login_ip_failures_per_minute=10_000) as app:
        app.state.passwords.close()
        app.state.passwords = PasswordHashing(workers=1, queue_limit=2)
        async with client_for(app) as client:
            email, _password, _token = await new_user(client)
            client.cookies.clear()
            responses = await asyncio.gather(
                *(sign_in(client, email, "wrong wrong wrong") for _ in range(20))
            )
        statuses = Counter(r.status_code for r in responses)
        assert set(statuses) <= {401, 503}
        assert statuses[503] >= 1
        assert all(r.headers.get("Retry-After") for r in responses if r.status_code == 503)
        assert (await user_row(app, email)).failed_login_count == statuses[401]
        reasons = await failure_reasons(app)
        assert reasons == {"wrong_password": statuses[401], "overloaded": statuses[503]}
