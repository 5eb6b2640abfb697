"""authkeep's own API limits (SPEC §7; BI-06, BI-08, CHK-BF-07, CHK-AK-06, FI-EDGE-08): 60/min per
anonymous client IP, 300/min per owner, 120/min per API key, with the real default values passed
explicitly (the suite's `make_settings` raises them for every other test).

Every test drives the whole app: anonymous calls, sessions and API keys made through the real
routes; the Redis tests use a real Redis (the `redis_url` fixture).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from authkeep.config import Settings
from authkeep.core.apilimits import api_limiter_for
from authkeep.core.ratelimit import MemoryRateLimiter, limiter_for
from authkeep.core.ratelimit_redis import RedisRateLimiter
from support.asgi import RawAnswer, raw_request
from support.secrets_scan import FIGURES, SCAN
from users.identity_helpers import bearer, client_for, new_user, sign_in, started_app

REAL_LIMITS: dict[str, Any] = {
    "api_limit_per_ip": 60,
    "api_limit_per_owner": 300,
    "api_limit_per_key": 120,
    "api_limit_window_seconds": 60,
}
SESSION = "/api/auth/session"
MakeSettings = Callable[..., Settings]


@pytest.fixture
async def limited_app(migrated_url: str, make_settings: MakeSettings) -> AsyncIterator[FastAPI]:
    async with started_app(make_settings, migrated_url, **REAL_LIMITS) as app:
        yield app


def limits_of(response: httpx.Response) -> tuple[int, int, int]:
    """(RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset) of a limited answer."""
    headers = response.headers
    return (
        int(headers["ratelimit-limit"]),
        int(headers["ratelimit-remaining"]),
        int(headers["ratelimit-reset"]),
    )


def assert_refused(response: httpx.Response, limit: int) -> None:
    """A 429 `rate_limited` with Retry-After and the RateLimit-* headers of the used-up bucket."""
    assert response.status_code == 429, response.text
    assert response.json()["error"] == "rate_limited"
    assert 1 <= int(response.headers["retry-after"]) <= 60
    assert limits_of(response)[:2] == (limit, 0)


async def test_anonymous_clients_get_60_a_minute_per_ip(limited_app: FastAPI) -> None:
    """60 anonymous calls pass with a counting-down RateLimit-Remaining, the 61st is a 429 with
    Retry-After; another client IP has its own budget; health, version, JWKS and verify are
    never limited and carry no RateLimit headers."""
    async with client_for(limited_app, ip="203.0.113.7") as client:
        answers = [await client.get(SESSION) for _ in range(60)]
        assert {a.status_code for a in answers} == {401}
        assert [limits_of(a)[1] for a in answers] == list(range(59, -1, -1))
        assert all(limits_of(a)[0] == 60 and 1 <= limits_of(a)[2] <= 60 for a in answers)
        assert_refused(await client.get(SESSION), 60)
        assert_refused(await client.get("/api/usage"), 60)  # every /api route, one bucket
        for path in ("/api/health", "/health", "/api/version", "/.well-known/jwks.json"):
            answer = await client.get(path)
            assert answer.status_code == 200, path
            assert "ratelimit-limit" not in answer.headers
        verify = await client.post("/api/keys/verify", json={})
        assert verify.status_code == 401  # no key header; never a 429 from the own-API limit
        assert "ratelimit-limit" not in verify.headers
    async with client_for(limited_app, ip="203.0.113.8") as other:
        answer = await other.get(SESSION)
        assert answer.status_code == 401
        assert limits_of(answer)[:2] == (60, 59)


async def test_made_up_credentials_share_the_ip_budget(limited_app: FastAPI) -> None:
    """A bearer token, an X-API-Key or a session cookie that does not authenticate buys no extra
    budget: those calls count against the client IP's bucket like anonymous ones, and once it
    is used up their 401 becomes a 429."""
    garbage: list[dict[str, str]] = [
        {},
        {"Authorization": "Bearer not-a-session"},
        {"X-API-Key": "ak_not_a_key"},
        {"Cookie": "authkeep_session=not-a-session"},
    ]
    async with client_for(limited_app, ip="198.51.100.9") as client:
        remaining = []
        for i in range(60):
            answer = await client.get(SESSION, headers=garbage[i % 4])
            assert answer.status_code == 401
            remaining.append(limits_of(answer)[1])
        assert remaining == list(range(59, -1, -1))
        for headers in garbage:
            assert_refused(await client.get(SESSION, headers=headers), 60)


async def test_signed_in_users_are_charged_to_their_owner_not_their_ip(
    limited_app: FastAPI,
) -> None:
    """Sessions count against the user's owner bucket (300/min) whatever their IP, all the
    user's sessions together; a used-up anonymous budget on the same IP does not block them,
    and another user keeps a full budget."""
    async with (
        client_for(limited_app, ip="192.0.2.10") as first,
        client_for(limited_app, ip="192.0.2.11") as second,
    ):
        email, password, token = await new_user(first)
        first.cookies.clear()
        while (await first.get(SESSION)).status_code != 429:
            pass  # use up 192.0.2.10's anonymous budget
        second_token = (await sign_in(second, email, password)).json()["token"]
        second.cookies.clear()
        answers = [
            await (first if i % 2 else second).get(
                SESSION, headers=bearer(token if i % 2 else second_token)
            )
            for i in range(300)
        ]
        assert {a.status_code for a in answers} == {200}
        assert [limits_of(a)[1] for a in answers] == list(range(299, -1, -1))
        assert all(limits_of(a)[0] == 300 for a in answers)
        assert_refused(await first.get(SESSION, headers=bearer(token)), 300)
    async with client_for(limited_app, ip="192.0.2.10") as third:
        other_token = (await new_user_from_fresh_ip(limited_app))[2]
        answer = await third.get(SESSION, headers=bearer(other_token))
        assert answer.status_code == 200
        assert limits_of(answer)[:2] == (300, 299)


async def new_user_from_fresh_ip(app: FastAPI) -> tuple[str, str, str]:
    async with client_for(app, ip=f"192.0.2.{secrets.randbelow(100) + 100}") as client:
        return await new_user(client)


async def create_key(client: httpx.AsyncClient, token: str, **fields: Any) -> str:
    answer = await client.post("/api/keys", json={"name": "k", **fields}, headers=bearer(token))
    assert answer.status_code == 201, answer.text
    return SCAN.register(answer.json()["key"])


async def report(client: httpx.AsyncClient, key: str) -> httpx.Response:
    return await client.post("/api/usage/report", json={"count": 1}, headers={"X-API-Key": key})


async def test_api_keys_are_charged_per_key_and_per_owner(limited_app: FastAPI) -> None:
    """120/min per key and 300/min per owner (the account that owns the keys): key A passes
    120 calls then 429s — and those refusals cost its owner nothing —, key B passes 120, key C
    (no external id, same account) then passes exactly what is left of the owner's 300 (the
    session calls that created the keys count too). A key of
    another account that chose the same external id is unaffected."""
    owner = f"acme-{secrets.token_hex(4)}"
    async with client_for(limited_app, ip="192.0.2.50") as client:
        token = (await new_user(client))[2]
        client.cookies.clear()
        key_a, key_b = [await create_key(client, token, external_id=owner) for _ in "ab"]
        key_c = await create_key(client, token)
        other_token = (await new_user(client))[2]
        client.cookies.clear()
        other_key = await create_key(client, other_token, external_id=owner)

        answers = [await report(client, key_a) for _ in range(120)]
        assert {a.status_code for a in answers} == {202}, answers[-1].text
        assert [limits_of(a)[:2] for a in answers] == [(120, n) for n in range(119, -1, -1)]
        for _ in range(10):
            assert_refused(await report(client, key_a), 120)

        assert all([(await report(client, key_b)).status_code == 202 for _ in range(120)])
        passed_c = 0
        while (answer := await report(client, key_c)).status_code == 202:
            passed_c += 1
        # The owner's 300: 3 session calls that created the keys, 120 + 120 by keys A and B.
        assert passed_c == 300 - 3 - 240
        assert_refused(answer, 300)  # the owner's budget, not key C's, ran out

        answer = await report(client, other_key)
        assert answer.status_code == 202
        assert limits_of(answer)[:2] == (120, 119)


async def raw_get(app: FastAPI, path: str, ip: str, method: str = "GET") -> RawAnswer:
    """One request with exactly this path (see `support.asgi`)."""
    return await raw_request(app, method, path, client_ip=ip)


LIMITED_VARIANTS = [
    "/api/auth/session",
    "//api/auth/session",
    "///api/auth/session",
    "/api//auth/session",
    "/api/auth/session/",
    "/api/./auth/session",
    "/api/auth/../auth/session",
    "/API/auth/session",
    "/api/AUTH/session",
    "/api/auth/session;x=1",
    "/api/auth/session%2F",
]
EXEMPT_VARIANTS = ["/api/health", "//api/health", "/api//health", "/api/health/", "/api/./health"]


@pytest.mark.parametrize("migrated_url", ["sqlite"], indirect=True)
async def test_every_spelling_of_a_path_hits_the_same_bucket_BI_06(
    limited_app: FastAPI,
) -> None:
    """BI-06: `//x`, `/./x`, a trailing slash, other case, `;` parameters... each variant of a
    limited route is charged to the one bucket of its client (RateLimit-Remaining counts down
    across all of them) or is not served at all; once the bucket is used up every variant is a
    429. Variants of an exempt route are the route itself, a redirect to it, or a 404."""
    ip = "203.0.113.66"
    expected = 59
    while expected >= 0:
        for path in LIMITED_VARIANTS:
            if expected < 0:
                break
            answer = await raw_get(limited_app, path, ip)
            assert answer.status in {401, 404}, path
            assert int(answer.headers["ratelimit-remaining"]) == expected, path
            expected -= 1
    for path in LIMITED_VARIANTS:
        assert (await raw_get(limited_app, path, ip)).status == 429, path
    for path in EXEMPT_VARIANTS:
        answer = await raw_get(limited_app, path, ip)
        assert answer.status in {200, 404}, path
        assert "ratelimit-limit" not in answer.headers, path
    for path in ("//api/keys/verify", "/api/keys//verify", "/API/keys/verify"):
        answer = await raw_get(limited_app, path, ip, method="POST")
        assert answer.status in {404, 405, 429}, path  # never served: no bypass of anything


@pytest.mark.parametrize("migrated_url", ["sqlite"], indirect=True)
async def test_spoofed_forwarded_for_lands_in_one_bucket_BI_08(
    migrated_url: str, make_settings: MakeSettings
) -> None:
    """BI-08 / CHK-BF-07: 1,000 distinct X-Forwarded-For values from an untrusted peer are one
    client (60 pass); through a trusted proxy, rotating addresses inside one IPv6 /64 are one
    client too, and another /64 is another client."""
    async with started_app(
        make_settings, migrated_url, trusted_proxies=["10.0.0.0/8"], **REAL_LIMITS
    ) as app:
        async with client_for(app, ip="198.51.100.77") as untrusted:
            statuses = [
                (
                    await untrusted.get(
                        SESSION, headers={"X-Forwarded-For": f"100.64.{i // 250}.{i % 250}"}
                    )
                ).status_code
                for i in range(1000)
            ]
        assert statuses.count(401) == 60
        assert statuses.count(429) == 940
        async with client_for(app, ip="10.1.2.3") as proxy:
            rotating = [
                (
                    await proxy.get(
                        SESSION, headers={"X-Forwarded-For": f"2001:db8:7:7:{i:x}::{i + 1:x}"}
                    )
                ).status_code
                for i in range(100)
            ]
            assert rotating.count(401) == 60
            other = await proxy.get(SESSION, headers={"X-Forwarded-For": "2001:db8:7:8::1"})
            assert other.status_code == 401
            assert limits_of(other)[1] == 59


@pytest.mark.parametrize("migrated_url", ["sqlite"], indirect=True)
async def test_redis_backs_every_limiter_when_configured(
    migrated_url: str, make_settings: MakeSettings, redis_url: str
) -> None:
    """With AUTHKEEP_REDIS_URL the app's one limiter (own API, sign-in, MFA, mail) is Redis;
    without it, in process."""
    async with started_app(make_settings, migrated_url, redis_url=redis_url) as app:
        assert isinstance(limiter_for(app), RedisRateLimiter)
        assert api_limiter_for(app) is limiter_for(app)
    async with started_app(make_settings, migrated_url) as app:
        assert isinstance(limiter_for(app), MemoryRateLimiter)
        # In process the API limits keep a bounded memory of their own, so API floods from many
        # addresses cannot evict sign-in or MFA counters.
        assert isinstance(api_limiter_for(app), MemoryRateLimiter)
        assert api_limiter_for(app) is not limiter_for(app)


@pytest.mark.parametrize("migrated_url", ["sqlite"], indirect=True)
async def test_two_nodes_sharing_redis_keep_one_budget_FI_EDGE_08(
    migrated_url: str, make_settings: MakeSettings, redis_url: str
) -> None:
    """FI-EDGE-08 (2-node, one case): limit 100 per 5 s, 300 anonymous calls from one client
    split across two app instances sharing one database and one Redis. Allowed must lie within
    [0.95, 1.20] x the theoretical maximum min(windows x limit, total) — [95, 120] when the load
    fits in one window."""
    limit, window, total = 100, 5, 300
    overrides = {"api_limit_per_ip": limit, "api_limit_window_seconds": window}
    async with (
        started_app(make_settings, migrated_url, redis_url=redis_url, **overrides) as node_a,
        started_app(make_settings, migrated_url, redis_url=redis_url, **overrides) as node_b,
    ):
        gate = asyncio.Semaphore(32)
        async with (
            client_for(node_a, ip="203.0.113.99") as a,
            client_for(node_b, ip="203.0.113.99") as b,
        ):

            async def call(i: int) -> int:
                async with gate:
                    return (await (a if i % 2 else b).get(SESSION)).status_code

            started = time.monotonic()
            statuses = await asyncio.gather(*(call(i) for i in range(total)))
            elapsed = time.monotonic() - started
    allowed = statuses.count(401)
    errors = len(statuses) - allowed - statuses.count(429)
    theoretical = min((int(elapsed // window) + 1) * limit, total)
    FIGURES.append(
        f"FI-EDGE-08 2 nodes on Redis, limit {limit}/{window} s, {total} calls in "
        f"{elapsed:.2f} s: allowed {allowed} (theoretical {theoretical}), errors {errors}"
    )
    assert errors == 0
    assert 0.95 * limit <= allowed <= 1.20 * theoretical


@pytest.mark.parametrize("migrated_url", ["sqlite"], indirect=True)
async def test_unreachable_redis_fails_closed_with_503_never_500(
    migrated_url: str, make_settings: MakeSettings, closed_port: int
) -> None:
    """Redis down: the node still starts; every limited route (anonymous, made-up credential,
    sign-in with its own limiter) answers 503 `rate_limiter_unavailable` with Retry-After —
    nothing passes uncounted, nothing is a 500 — while health and version still answer."""
    async with (
        started_app(
            make_settings, migrated_url, redis_url=f"redis://127.0.0.1:{closed_port}/0"
        ) as app,
        client_for(app, ip="203.0.113.5") as client,
    ):
        calls = [
            client.get(SESSION),
            client.get(SESSION, headers={"Authorization": "Bearer not-a-session"}),
        ]
        for answer in [await call for call in calls]:
            assert answer.status_code == 503, answer.text
            assert answer.json()["error"] == "rate_limiter_unavailable"
            assert answer.headers["retry-after"] == "5"
        sign_in_answer = await client.post(
            "/api/auth/sign-in", json={"email": "a@example.com", "password": "x" * 20}
        )
        assert sign_in_answer.status_code == 503
        for path in ("/api/health", "/api/version", "/health"):
            assert (await client.get(path)).status_code == 200
