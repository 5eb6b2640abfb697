"""Progressive sign-in delays (CHK-BF-02/03/05, CHK-EN-01/03): the wait after each failure
follows the configured schedule on both backends, the same for unknown and registered
addresses; a success or a completed reset ends it; password checks by user id share the
email's run; the stores stay bounded and fail closed.

Every test passes the real schedule (`REAL`): tests/conftest.py turns the waits off for the
rest of the suite. Time is moved with time-machine (wall clock), hashing uses the test-only
cheap argon2 parameters, and the per-network limit is raised so it never interferes.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import time_machine
from email_helpers import forgot, mail_app, reset, signed_up_user
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from identity_helpers import (
    audit_rows,
    bearer,
    cheap_hashing,
    client_for,
    new_email,
    new_user,
    sign_in,
    started_app,
    strong_password,
    user_row,
)
from pydantic import SecretStr
from typer.testing import CliRunner

from authkeep.cli import app as cli_app
from authkeep.core import redis_client
from authkeep.core.clientip import limiter_key
from authkeep.core.ratelimit import limiter_for
from authkeep.users.delays import MemoryDelays, RedisDelays, Schedule
from support.secrets_scan import FIGURES, SCAN
from support.smtp import Mailbox, smtp_mailbox_fixture

__all__ = ["smtp_mailbox_fixture"]

START = datetime(2031, 3, 1, 12, 0, tzinfo=UTC)  # a whole second: exact float timestamps
REAL = {
    "login_delay_after": 5,
    "login_delay_base_seconds": 1.0,
    "login_delay_max_seconds": 900.0,
    "login_ip_failures_per_minute": 100_000,
}
WRONG = "not the password, a guess"
MS = 0.001


def expected_wait(k: int, after: int = 5, base: float = 1.0, most: float = 900.0) -> float:
    """The documented schedule, written out independently of the code under test."""
    return 0.0 if k <= after else min(most, base * 2 ** (k - after - 1))


@asynccontextmanager
async def delay_app(
    make_settings: Any, url: str, backend: str, redis_url: str | None = None, **overrides: Any
) -> AsyncIterator[FastAPI]:
    extra = {"redis_url": redis_url} if backend == "redis" else {}
    async with started_app(make_settings, url, **{**REAL, **extra, **overrides}) as app:
        app.state.passwords.close()
        app.state.passwords = cheap_hashing(queue_limit=256)
        yield app


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def backend_redis_url(backend: str, request: pytest.FixtureRequest) -> str | None:
    return str(request.getfixturevalue("redis_url")) if backend == "redis" else None


async def measure_schedule(
    client: httpx.AsyncClient, traveller: Any, email: str, failures: int
) -> list[tuple[int, float, str]]:
    """Make `failures` failed sign-ins and measure, after each failure k, how long the next
    attempt must wait, to the millisecond: an attempt at once and one 1 ms before the expected
    end (both must be refused, with `Retry-After` = the time left rounded up to a second, when
    a wait is expected) and one at the expected end (must be judged: 401). Returns the
    mismatches."""
    mismatches: list[tuple[int, float, str]] = []
    assert (await sign_in(client, email, WRONG)).status_code == 401  # failure 1
    last = time.time()
    for k in range(1, failures):
        wait = expected_wait(k)
        if wait > 0:
            now = await sign_in(client, email, WRONG)
            traveller.move_to(last + wait - MS)
            early = await sign_in(client, email, WRONG)
            for label, refused, left in (("at once", now, wait), ("1 ms early", early, MS)):
                if refused.status_code != 429 or refused.json()["error"] != "rate_limited":
                    mismatches.append((k, wait, f"{label}: {refused.status_code}"))
                elif refused.headers["Retry-After"] != str(math.ceil(left)):
                    mismatches.append((k, wait, f"{label}: Retry-After {refused.headers}"))
            traveller.move_to(last + wait)
        judged = await sign_in(client, email, WRONG)  # failure k + 1
        if judged.status_code != 401:
            mismatches.append((k, wait, f"on time: {judged.status_code}"))
        last = time.time()
    return mismatches


async def test_wait_after_each_failure_follows_the_schedule_CHK_BF_02(
    migrated_url: str, make_settings: Any, backend: str, backend_redis_url: str | None
):
    """After failure k (k = 1..99) the next attempt waits exactly min(900, 1 x 2^(k-6)) s
    (none for k ≤ 5), measured to 1 ms: 0 mismatches, on the in-process and the Redis store.
    The refused attempts run no hash and are audited as throttled (`account_delay`)."""
    async with delay_app(make_settings, migrated_url, backend, backend_redis_url) as app:
        async with client_for(app) as client:
            email, _password, _token = await new_user(client)
            client.cookies.clear()
            with time_machine.travel(START, tick=False) as traveller:
                hashes_before = app.state.passwords.verify_calls
                mismatches = await measure_schedule(client, traveller, email, 100)
                hashes = app.state.passwords.verify_calls - hashes_before
        rows = await audit_rows(app, "auth.sign_in")
        outcomes = Counter((e.outcome, (e.detail or {}).get("reason")) for e in rows)
        failed_count = (await user_row(app, email)).failed_login_count
    engine = "sqlite" if migrated_url.startswith("sqlite") else "postgresql"
    FIGURES.append(
        f"CHK-BF-02 {backend} store, {engine}: wait after failure k = 1..99 measured to 1 ms "
        f"against the schedule: {len(mismatches)} mismatches"
    )
    assert mismatches == []
    waits = sum(1 for k in range(1, 100) if expected_wait(k) > 0)
    assert hashes == 100  # one per judged attempt, none for the 2 x 94 refused ones
    assert outcomes[("throttled", "account_delay")] == 2 * waits
    assert outcomes[("failure", "wrong_password")] == 100
    assert failed_count == 100


def comparable(response: httpx.Response) -> tuple[int, bytes, tuple[tuple[str, str], ...]]:
    """Status, body and headers, minus the request id and the client's own API budget."""
    headers = sorted(
        (k, v)
        for k, v in response.headers.items()
        if k != "x-request-id" and not k.startswith("ratelimit-")
    )
    return response.status_code, response.content, tuple(headers)


async def test_unknown_and_registered_addresses_wait_alike_CHK_EN_03(
    migrated_url: str, make_settings: Any
):
    """The same sequence of attempts (at once, and after moving the clock) against a
    registered address and an unknown one gives the same statuses, bodies and headers, 100 %
    of 50 trials each; another spelling of the address shares its wait (canonical email)."""
    async with (
        delay_app(make_settings, migrated_url, "memory") as app,
        client_for(app) as client,
    ):
        registered, _password, _token = await new_user(client)
        client.cookies.clear()
        sequences: dict[str, set[tuple[Any, ...]]] = {"registered": set(), "unknown": set()}
        with time_machine.travel(START, tick=False) as traveller:
            for trial in range(50):
                for name in sequences:
                    email = registered if name == "registered" else new_email("nobody")
                    if trial and name == "registered":
                        traveller.shift(timedelta(hours=13))  # the run is forgotten
                    answers = []
                    for step in range(9):
                        shout = email.upper() if step % 2 else email
                        answers.append(comparable(await sign_in(client, shout, WRONG)))
                        if step == 7:
                            traveller.shift(1)
                    sequences[name].add(tuple(answers))
    assert len(sequences["registered"]) == 1
    assert sequences["registered"] == sequences["unknown"]
    statuses = [status for status, _body, _headers in next(iter(sequences["unknown"]))]
    assert statuses == [401] * 6 + [429, 429, 401]
    FIGURES.append(
        "CHK-EN-03 sign-in delays: registered vs unknown address, 50 trials x 9 attempts, "
        "1 distinct sequence for both"
    )


async def test_a_success_ends_the_run_CHK_BF_05(migrated_url: str, make_settings: Any):
    """99 failures, 1 success, 99 failures, 1 success: the account is never disabled, and
    after the success the first 5 failures wait nothing again."""
    async with (
        delay_app(make_settings, migrated_url, "memory") as app,
        client_for(app) as client,
    ):
        email, password, _token = await new_user(client)
        client.cookies.clear()
        with time_machine.travel(START, tick=False) as traveller:
            for round_ in range(2):
                assert await measure_schedule(client, traveller, email, 99) == []
                traveller.shift(expected_wait(99))
                client.cookies.clear()
                signed_in = await sign_in(client, email, password)
                assert signed_in.status_code == 200, (round_, signed_in.text)
                assert (await user_row(app, email)).failed_login_count == 0


async def test_owner_reset_ends_the_wait_and_the_lock_CHK_BF_03(
    migrated_url: str,
    make_settings: Any,
    smtp_mailbox: Mailbox,
    backend: str,
    backend_redis_url: str | None,
):
    """An attacker drives the account past the ceiling (101 failures, waiting out every
    delay, the last ones 900 s); the owner completes a reset by email and signs in with the
    new password on the first attempt, with no wait."""
    extra = {"redis_url": backend_redis_url} if backend == "redis" else {}
    async with (
        mail_app(make_settings, migrated_url, smtp_mailbox, cheap=True, **REAL, **extra) as app,
        client_for(app) as client,
    ):
        email, password, _token = await signed_up_user(client, smtp_mailbox)
        client.cookies.clear()
        with time_machine.travel(START, tick=False) as traveller:
            for k in range(1, 102):
                assert (await sign_in(client, email, WRONG)).status_code == 401, k
                traveller.shift(expected_wait(k))
            locked = await sign_in(client, email, password)
            assert (locked.status_code, locked.json()["error"]) == (401, "invalid_credentials")
            waiting = await sign_in(client, email, password)
            assert (waiting.status_code, waiting.headers["Retry-After"]) == (429, "900")

            assert (await forgot(client, email)).status_code == 202
            new_password = strong_password("copper-meadow-")
            token = smtp_mailbox.last_token(email)
            assert (await reset(client, token, new_password)).status_code == 200
            assert (await sign_in(client, email, new_password)).status_code == 200


def test_create_admin_with_a_new_password_ends_the_shared_delay(
    migrated_url: str, make_settings: Any, redis_url: str
):
    """`authkeep users create-admin` setting a new password (an operator's reset) ends the
    address's wait too when the delays live in Redis, which the command can reach."""
    email = new_email("ops")
    secret = secrets.token_urlsafe(48)
    slow = {"secret_key": secret, "login_delay_after": 0, "login_delay_base_seconds": 600.0}

    async def on_server(password: str, wrong_first: bool) -> httpx.Response:
        async with (
            delay_app(make_settings, migrated_url, "redis", redis_url, **slow) as app,
            client_for(app) as client,
        ):
            if wrong_first:
                await new_user(client, email, password)
                client.cookies.clear()
                assert (await sign_in(client, email, WRONG)).status_code == 401
            return await sign_in(client, email, password)

    waiting = asyncio.run(on_server(strong_password(), wrong_first=True))
    assert (waiting.status_code, waiting.headers["Retry-After"]) == (429, "600")
    new_password = strong_password()
    env = {
        "DATABASE_URL": migrated_url,
        "AUTHKEEP_REDIS_URL": redis_url,
        "AUTHKEEP_SECRET_KEY": secret,
        "AUTHKEEP_ADMIN_PASSWORD": new_password,
    }
    result = CliRunner().invoke(cli_app, ["users", "create-admin", "--email", email], env=env)
    SCAN.record("cli:users create-admin", result.output)
    assert result.exit_code == 0, result.output
    assert asyncio.run(on_server(new_password, wrong_first=False)).status_code == 200


async def test_password_checks_by_user_id_share_the_email_run_CHK_BF_02(
    migrated_url: str, make_settings: Any
):
    """A wrong current password on change-password and on delete-account joins the sign-in
    run of the account's email: the next sign-in waits for it, and so does the next check."""
    async with (
        delay_app(make_settings, migrated_url, "memory") as app,
        client_for(app) as client,
    ):
        with time_machine.travel(START, tick=False) as traveller:
            email, password, token = await new_user(client)
            client.cookies.clear()
            for _ in range(5):
                assert (await sign_in(client, email, WRONG)).status_code == 401
            change = await client.post(
                "/api/auth/password/change",
                json={"current_password": WRONG, "new_password": strong_password()},
                headers=bearer(token),
            )
            assert (change.status_code, change.json()["error"]) == (
                403,
                "invalid_current_password",
            )  # failure 6: a wait of 1 s
            waiting = await sign_in(client, email, password)
            assert (waiting.status_code, waiting.headers["Retry-After"]) == (429, "1")
            traveller.shift(1)
            delete = await client.post(
                "/api/auth/account/delete", json={"password": WRONG}, headers=bearer(token)
            )
            assert delete.status_code == 403  # failure 7: a wait of 2 s
            again = await client.post(
                "/api/auth/account/delete", json={"password": password}, headers=bearer(token)
            )
            assert (again.status_code, again.headers["Retry-After"]) == (429, "2")
            traveller.shift(2)
            client.cookies.clear()
            assert (await sign_in(client, email, password)).status_code == 200
        rows = await audit_rows(app, "auth.account_delete")
    assert [(e.outcome, (e.detail or {}).get("reason")) for e in rows] == [
        ("failure", "wrong_password"),
        ("throttled", "account_delay"),
    ]


async def test_memory_store_is_bounded_and_forgets_quiet_runs():
    """At most `max_keys` runs, the least recently used dropped first; a run with no failure
    for 12 hours starts again from nothing."""
    now = [1_000_000.0]
    store = MemoryDelays(max_keys=3, clock=lambda: now[0])
    schedule = Schedule(after=0, base=10.0, most=100.0)
    for key in ("a", "b", "c", "d"):
        assert await store.admit(key, schedule) == 0
    assert len(store) == 3
    assert await store.admit("a", schedule) == 0  # "a" was dropped: a new run, admitted
    assert await store.admit("c", schedule) == 10.0  # "c" is still waiting
    now[0] += 10 + 12 * 3600
    assert await store.admit("c", schedule) == 0
    assert await store.admit("c", schedule) == 10.0  # forgotten: failure 1 again, 10 s


class Clock:
    def __init__(self) -> None:
        self.now = 1_900_000_000.0

    def __call__(self) -> float:
        return self.now


operations = st.lists(
    st.tuples(
        st.sampled_from(["admit", "admit", "admit", "release", "clear"]),
        st.sampled_from(["x", "y"]),
        st.sampled_from([0.0, 0.25, 0.999, 1.0, 3.0, 40.0]),
    ),
    max_size=40,
)


@given(
    after=st.integers(0, 3),
    base=st.sampled_from([0.0, 0.5, 1.0, 2.5]),
    most=st.sampled_from([0.0, 4.0, 30.0]),
    steps=operations,
)
@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_redis_store_decides_like_the_memory_store(
    redis_url: str, after: int, base: float, most: float, steps: list[tuple[str, str, float]]
) -> None:
    """For any sequence of admissions, releases, clears and clock moves, the Redis script
    answers exactly as the in-process store (the same waits to the microsecond)."""

    async def run() -> None:
        clock = Clock()
        client = redis_client.connect(SecretStr(redis_url))
        try:
            shared = RedisDelays(client, prefix=f"t{secrets.token_hex(4)}:", clock=clock)
            local = MemoryDelays(clock=clock)
            schedule = Schedule(after, base, most)
            for operation, key, advance in steps:
                clock.now += advance
                if operation == "admit":
                    assert await shared.admit(key, schedule) == await local.admit(key, schedule)
                else:
                    await getattr(shared, operation)(key)
                    await getattr(local, operation)(key)
        finally:
            await client.aclose()

    asyncio.run(run())


async def test_delay_store_down_fails_closed(
    migrated_url: str, make_settings: Any, closed_port: int
):
    """A Redis that does not answer: 503 `rate_limiter_unavailable`, no hash, never a pass;
    the client's network budget is not charged for it."""
    async with delay_app(make_settings, migrated_url, "memory") as app:
        client_ = redis_client.connect(SecretStr(f"redis://127.0.0.1:{closed_port}/0"))
        app.state.sign_in_delays = RedisDelays(client_)
        try:
            async with client_for(app) as client:
                before = app.state.passwords.verify_calls
                for _ in range(3):
                    response = await sign_in(client, new_email(), WRONG)
                    assert (response.status_code, response.json()["error"]) == (
                        503,
                        "rate_limiter_unavailable",
                    )
                assert app.state.passwords.verify_calls == before
            network = limiter_for(app)
            assert (await network.peek(f"password:{limiter_key('127.0.0.1')}", 1, 60)).allowed
        finally:
            await client_.aclose()
