"""Account enumeration (CHK-EN-01, CHK-EN-02): sign-in and sign-up answer the same, in the same
time, whether or not the account exists — and for disabled, deleted and locked accounts.

Timing is measured in process (ASGI, real argon2id) with the branches interleaved round by
round, so drift on a busy machine hits every branch alike; medians are compared.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
from fastapi import FastAPI
from identity_helpers import (
    SAME_ORIGIN,
    bearer,
    client_for,
    database,
    median_ratio,
    new_email,
    new_user,
    sign_in,
    sign_up,
    started_app,
    strong_password,
)
from sqlalchemy import update

from authkeep.core.models import utcnow
from authkeep.users.models import User
from support.secrets_scan import FIGURES, SCAN

TRIALS = 25
TIMING_SAMPLES = 50
RATIO_BOUNDS = (0.8, 1.25)


@pytest.fixture
async def roomy_app(migrated_url: str, make_settings) -> AsyncIterator[FastAPI]:
    """Per-network limits high enough for many trials from one test client."""
    async with started_app(make_settings, migrated_url, login_ip_failures_per_minute=10_000) as a:
        yield a


@pytest.fixture
async def roomy_client(roomy_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(roomy_app) as client:
        yield client


async def _accounts(app: FastAPI, client: httpx.AsyncClient) -> dict[str, tuple[str, str]]:
    """(email, password) per case; each case's attempt must be refused."""
    wrong_email, _pw, _t = await new_user(client)
    disabled_email, disabled_pw, _t = await new_user(client)
    locked_email, locked_pw, _t = await new_user(client)
    deleted_email, deleted_pw, token = await new_user(client)
    empty_email, _pw, _t = await new_user(client)
    client.cookies.clear()
    deleted = await client.post(
        "/api/auth/account/delete", json={"password": deleted_pw}, headers=bearer(token)
    )
    assert deleted.status_code == 204
    async with database(app).session_scope() as db:
        await db.execute(
            update(User).where(User.email == disabled_email).values(disabled_at=utcnow())
        )
        await db.execute(
            update(User).where(User.email == locked_email).values(failed_login_count=10_000)
        )
    return {
        "unknown": (new_email("nobody"), strong_password()),
        "wrong_password": (wrong_email, strong_password()),
        "empty_password": (empty_email, ""),
        "disabled": (disabled_email, disabled_pw),
        "deleted": (deleted_email, deleted_pw),
        "locked": (locked_email, locked_pw),
    }


def _comparable(response: httpx.Response) -> tuple[int, str, list[tuple[str, str]]]:
    # The request id and the client's own API budget (RateLimit-*) change with every request,
    # whatever the account: they are not part of what must not tell accounts apart.
    headers = sorted(
        (k, v)
        for k, v in response.headers.items()
        if k != "x-request-id" and not k.startswith("ratelimit-")
    )
    return response.status_code, response.text, headers


async def test_sign_in_refusals_are_identical_CHK_EN_01(
    roomy_app: FastAPI, roomy_client: httpx.AsyncClient
):
    """Status, body and headers (minus the request id and the RateLimit-* budget) are
    byte-identical for unknown email, wrong password, empty password, disabled, deleted and
    locked accounts, in every trial."""
    cases = await _accounts(roomy_app, roomy_client)
    seen: dict[str, set[tuple[int, str, str]]] = {name: set() for name in cases}
    for _ in range(TRIALS):
        for name, (email, password) in cases.items():
            response = await sign_in(roomy_client, email, password)
            status, text, headers = _comparable(response)
            seen[name].add((status, text, repr(headers)))
    answers = set().union(*seen.values())
    assert len(answers) == 1, seen
    status, text, _headers = answers.pop()
    assert status == 401
    assert '"error":"invalid_credentials"' in text
    FIGURES.append(f"CHK-EN-01 sign-in: {TRIALS} trials x {len(cases)} cases, 1 distinct answer")


async def test_sign_up_answers_the_same_for_new_and_existing_emails_CHK_EN_01(
    roomy_app: FastAPI, roomy_client: httpx.AsyncClient
):
    existing, _pw, _t = await new_user(roomy_client)
    roomy_client.cookies.clear()
    answers = set()
    for _ in range(TRIALS):
        for email in (existing, existing.upper(), new_email("fresh")):
            response = await sign_up(roomy_client, email, strong_password())
            status, text, headers = _comparable(response)
            answers.add((status, text, repr(headers)))
    assert len(answers) == 1
    assert next(iter(answers))[0] == 202


async def _timed(call: Callable[[], Awaitable[httpx.Response]], expect: int) -> float:
    started = time.perf_counter()
    response = await call()
    elapsed = time.perf_counter() - started
    assert response.status_code == expect, response.text
    return elapsed


async def test_sign_in_takes_the_same_time_for_every_refusal_CHK_EN_02(
    roomy_app: FastAPI, roomy_client: httpx.AsyncClient, migrated_url: str
):
    """Median time of each refusal vs unknown email, over interleaved samples: within
    [0.8, 1.25]. Each branch does the same argon2 work (dummy hash for unknown/locked)."""
    cases = await _accounts(roomy_app, roomy_client)
    del cases["deleted"]  # a deleted email is an unknown email by construction
    samples: dict[str, list[float]] = {name: [] for name in cases}
    await sign_in(roomy_client, *cases["unknown"])  # warm-up
    for _ in range(TIMING_SAMPLES):
        for name, (email, password) in cases.items():

            def call(e: str = email, p: str = password) -> Awaitable[httpx.Response]:
                return roomy_client.post("/api/auth/sign-in", json={"email": e, "password": p})

            samples[name].append(await _timed(call, 401))
    engine = "sqlite" if migrated_url.startswith("sqlite") else "postgresql"
    for name in cases:
        if name == "unknown":
            continue
        ratio = median_ratio(samples[name], samples["unknown"])
        FIGURES.append(
            f"CHK-EN-02 sign-in {engine}: median {name} / unknown = {ratio:.3f} "
            f"({TIMING_SAMPLES} samples each, in-process)"
        )
        assert RATIO_BOUNDS[0] <= ratio <= RATIO_BOUNDS[1], (name, ratio)


async def test_sign_up_takes_the_same_time_for_new_and_existing_emails_CHK_EN_02(
    roomy_app: FastAPI, roomy_client: httpx.AsyncClient, migrated_url: str
):
    existing, _pw, _t = await new_user(roomy_client)
    password = SCAN.register(strong_password())
    new_times: list[float] = []
    existing_times: list[float] = []
    await sign_up(roomy_client, new_email("warm"), password)
    for _ in range(TIMING_SAMPLES):
        fresh = new_email("fresh")

        def new_call(e: str = fresh) -> Awaitable[httpx.Response]:
            return sign_up(roomy_client, e, password)

        def existing_call() -> Awaitable[httpx.Response]:
            return sign_up(roomy_client, existing, password)

        new_times.append(await _timed(new_call, 202))
        existing_times.append(await _timed(existing_call, 202))
    ratio = median_ratio(existing_times, new_times)
    engine = "sqlite" if migrated_url.startswith("sqlite") else "postgresql"
    FIGURES.append(
        f"CHK-EN-02 sign-up {engine}: median existing / new = {ratio:.3f} "
        f"({TIMING_SAMPLES} samples each, in-process)"
    )
    assert RATIO_BOUNDS[0] <= ratio <= RATIO_BOUNDS[1]


async def test_cross_site_login_form_is_refused_CHK_CK_03(roomy_client: httpx.AsyncClient):
    """Login CSRF: a browser reporting a cross-site form post gets 403 before any check;
    the refusal does not depend on the account either."""
    email, password, _t = await new_user(roomy_client)
    for who in (email, new_email()):
        response = await roomy_client.post(
            "/api/auth/sign-in",
            json={"email": who, "password": password},
            headers={"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"},
        )
        assert (response.status_code, response.json()["error"]) == (403, "csrf_rejected")
    foreign_origin = await roomy_client.post(
        "/api/auth/sign-in",
        json={"email": email, "password": password},
        headers={"Origin": "https://evil.example"},
    )
    assert foreign_origin.status_code == 403
    same = await sign_in(roomy_client, email, password, headers=SAME_ORIGIN)
    assert same.status_code == 200
