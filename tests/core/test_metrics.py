"""Metrics of the defences (CHK-BF-04, CHK-API-07): for each limiter, N requests refused
through the real app raise `authkeep_rate_limited_total{limiter=…}` by exactly N and no other
limiter's count; sign-in verdicts are counted; the failed-sign-in ratio alarm turns on with one
warning and off with one info line; `GET /metrics` is a 404 unless enabled, and a 404 to
anything that came through a proxy.

Counters are read from the app's own `/metrics` answer (Prometheus text format, parsed with
prometheus_client's parser), so the tests check what a scraper sees. The MFA limiters are
counted in tests/mfa/test_mfa_metrics.py.
"""

from __future__ import annotations

import logging
import secrets
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from authkeep.app import create_app
from authkeep.config import Settings
from authkeep.core.metrics import ALARM_MIN_ATTEMPTS, LIMITERS, metrics_for
from keys.verify_helpers import make_key, verify
from support.secrets_scan import FIGURES, SCAN
from users.identity_helpers import (
    bearer,
    cheap_hashing,
    client_for,
    new_email,
    new_user,
    sign_in,
    sign_up,
    started_app,
    strong_password,
)

MakeSettings = Callable[..., Settings]
WRONG = "not the password, a guess"
N = 4


@asynccontextmanager
async def metrics_app(
    make_settings: MakeSettings, url: str, **overrides: Any
) -> AsyncIterator[FastAPI]:
    async with started_app(make_settings, url, metrics_enabled=True, **overrides) as app:
        app.state.passwords.close()
        app.state.passwords = cheap_hashing(queue_limit=512)
        yield app


async def scrape(client: httpx.AsyncClient) -> dict[str, dict[str, float]]:
    """{family name: {label value (or ""): value}} from GET /metrics."""
    response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    found: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            label = next(iter(sample.labels.values()), "")
            found.setdefault(sample.name, {})[label] = sample.value
    return found


async def refused_counts(client: httpx.AsyncClient) -> Counter[str]:
    return Counter((await scrape(client))["authkeep_rate_limited_total"])


async def delta(client: httpx.AsyncClient, before: Counter[str]) -> dict[str, float]:
    """What rose since `before`, by limiter (only the ones that rose)."""
    after = await refused_counts(client)
    return {name: after[name] - before[name] for name in after if after[name] != before[name]}


async def test_metrics_are_a_404_unless_enabled_CHK_API_07(make_settings: MakeSettings):
    """Off by default, in development and in production: `/metrics` answers exactly like an
    unknown path (engine-independent: routing answers before any database work)."""
    for env in ("development", "production"):
        app = create_app(make_settings(env=env, secret_key=secrets.token_urlsafe(48)))
        try:
            async with client_for(app) as client:
                metrics = await client.get("/metrics")
                unknown = await client.get("/no-such-path")
        finally:
            app.state.passwords.close()  # no lifespan ran to close it
        assert metrics.status_code == unknown.status_code == 404
        assert metrics.json() == unknown.json()
        assert metrics.json()["error"] == "not_found"


async def test_metrics_when_enabled_are_prometheus_text_without_personal_data(
    migrated_url: str, make_settings: MakeSettings
):
    """200 with the Prometheus text format; every limiter and outcome is listed from the
    start; no label holds an email, an address or a key; a request that came through a proxy
    (X-Forwarded-For, Forwarded, Fly-Client-IP) gets the unknown-path 404."""
    async with (
        metrics_app(make_settings, migrated_url, login_ip_failures_per_minute=1) as app,
        client_for(app) as client,
    ):
        email, _password, _token = await new_user(client)
        key = await make_key(app)
        for _ in range(2):
            await sign_in(client, email, WRONG)
        response = await client.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert "# TYPE authkeep_rate_limited_total counter" in response.text
        for secret in (email, "127.0.0.1", key.key, "testserver"):
            assert secret not in response.text
        found = await scrape(client)
        assert set(found["authkeep_rate_limited_total"]) == set(LIMITERS)
        assert set(found["authkeep_sign_in_total"]) == {"success", "failure", "throttled"}
        assert found["authkeep_sign_in_failure_alarm"] == {"": 0.0}
        for header in ("X-Forwarded-For", "Forwarded", "Fly-Client-IP"):
            proxied = await client.get("/metrics", headers={header: "203.0.113.9"})
            assert (proxied.status_code, proxied.json()["error"]) == (404, "not_found")
        openmetrics = await client.get(
            "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
        )
        assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
        assert openmetrics.text.endswith("# EOF\n")


async def test_password_and_sign_up_limiters_count_each_refusal_CHK_BF_04(
    migrated_url: str, make_settings: MakeSettings
):
    """`password_ip` (sign-in and change-password share it), `sign_up_ip`: N refusals each,
    counted once; the sign-in outcomes say the same."""
    async with (
        metrics_app(make_settings, migrated_url, login_ip_failures_per_minute=3) as app,
        client_for(app) as client,
    ):
        email, password, token = await new_user(client)
        client.cookies.clear()
        before = await refused_counts(client)
        outcomes_before = Counter((await scrape(client))["authkeep_sign_in_total"])
        statuses = [(await sign_in(client, email, WRONG)).status_code for _ in range(3 + N)]
        assert statuses == [401] * 3 + [429] * N
        change = await client.post(
            "/api/auth/password/change",
            json={"current_password": password, "new_password": strong_password()},
            headers=bearer(token),
        )
        assert change.status_code == 429
        assert await delta(client, before) == {"password_ip": N + 1}
        outcomes = Counter((await scrape(client))["authkeep_sign_in_total"])
        outcomes.subtract(outcomes_before)
        assert +outcomes == {"failure": 3, "throttled": N}

        before = await refused_counts(client)
        statuses = [
            (await sign_up(client, new_email(), strong_password())).status_code
            for _ in range(2 + N)
        ]  # 3 per minute, new_user's sign-up included
        assert statuses == [202] * 2 + [429] * N
        assert await delta(client, before) == {"sign_up_ip": N}


async def test_account_delay_counts_each_refusal_CHK_BF_04(
    migrated_url: str, make_settings: MakeSettings
):
    """`account_delay`: after a failure that starts a 60 s wait, N attempts are refused by the
    delay alone (the network limit is far away)."""
    delays = {"login_delay_after": 0, "login_delay_base_seconds": 60.0}
    async with (
        metrics_app(make_settings, migrated_url, **delays) as app,
        client_for(app) as client,
    ):
        before = await refused_counts(client)
        email = new_email("nobody")
        assert (await sign_in(client, email, WRONG)).status_code == 401
        for _ in range(N):
            refused = await sign_in(client, email, WRONG)
            assert (refused.status_code, refused.headers["Retry-After"]) == (429, "60")
        assert await delta(client, before) == {"account_delay": N}


async def test_mail_limiters_count_each_refusal_CHK_BF_04(
    migrated_url: str, make_settings: MakeSettings
):
    """`mail_address` (5 mails per address and hour) and `mail_ip` (per network and minute):
    N refusals each. A sign-up whose verification mail is skipped by the limit is answered
    as usual and is not counted."""
    async with (
        metrics_app(make_settings, migrated_url, login_ip_failures_per_minute=12) as app,
        client_for(app) as client,
    ):
        forgot = "/api/auth/password/forgot"
        before = await refused_counts(client)
        address = new_email("nobody")
        statuses = [
            (await client.post(forgot, json={"email": address})).status_code for _ in range(5 + N)
        ]
        assert statuses == [202] * 5 + [429] * N
        assert await delta(client, before) == {"mail_address": N}

        before = await refused_counts(client)
        statuses = [
            (await client.post(forgot, json={"email": new_email()})).status_code
            for _ in range(3 + N)
        ]  # 12 per minute: 5 + 4 used above (refusals take nothing), 3 left
        assert statuses == [202] * 3 + [429] * N
        assert await delta(client, before) == {"mail_ip": N}


async def test_api_limiters_count_each_refusal_CHK_BF_04(
    migrated_url: str, make_settings: MakeSettings
):
    """`api_ip` (anonymous, and a made-up credential whose 401 becomes a 429), `api_owner`
    (a session), `api_key` (an API key): N refusals each, under the bucket that refused."""
    limits = {"api_limit_per_ip": 30, "api_limit_per_owner": 40, "api_limit_per_key": 3}
    async with (
        metrics_app(make_settings, migrated_url, **limits) as app,
        client_for(app) as client,
    ):
        _email, _password, token = await new_user(client)  # 2 anonymous calls
        client.cookies.clear()
        issued = await make_key(app)
        before = await refused_counts(client)
        anonymous = [(await client.get("/api/auth/session")).status_code for _ in range(28)]
        assert Counter(anonymous) == {401: 28}
        made_up = bearer(SCAN.register("ak_made_up_" + "x" * 40))
        assert (await client.get("/api/auth/session", headers=made_up)).status_code == 429
        for _ in range(N - 1):
            assert (await client.get("/api/auth/session")).status_code == 429
        assert await delta(client, before) == {"api_ip": N}

        before = await refused_counts(client)
        async with client_for(app, ip="198.51.100.7") as other:
            mine = bearer(token)
            statuses = [
                (await other.get("/api/auth/session", headers=mine)).status_code
                for _ in range(40 + N)
            ]
            assert statuses == [200] * 40 + [429] * N
            assert await delta(client, before) == {"api_owner": N}

            before = await refused_counts(client)
            report = {"count": 1}
            key_header = {"x-api-key": issued.key}
            statuses = [
                (await other.post("/api/usage/report", json=report, headers=key_header)).status_code
                for _ in range(3 + N)
            ]
            assert statuses == [202] * 3 + [429] * N
            assert await delta(client, before) == {"api_key": N}


async def test_verify_rate_limited_outcomes_are_counted_CHK_BF_04(
    migrated_url: str, make_settings: MakeSettings
):
    """A key's own limit on POST /api/keys/verify (`RATE_LIMITED`, a 200 outcome): counted
    under `verify_ratelimit`, once per refused verification."""
    async with metrics_app(make_settings, migrated_url) as app, client_for(app) as client:
        issued = await make_key(
            app, rate_limits=[{"name": "requests", "limit": 2, "window_seconds": 60}]
        )
        before = await refused_counts(client)
        codes = [(await verify(client, issued.key))["code"] for _ in range(2 + N)]
        assert codes == ["VALID"] * 2 + ["RATE_LIMITED"] * N
        assert await delta(client, before) == {"verify_ratelimit": N}


async def test_failed_sign_in_ratio_alarm_warns_once_and_clears_CHK_BF_04(
    migrated_url: str, make_settings: MakeSettings, caplog: pytest.LogCaptureFixture
):
    """Credential stuffing: 100 sign-ins with wrong passwords for random addresses turn the
    alarm on once 100 sign-ins were judged (gauge 1, exactly one warning
    `failed_sign_in_ratio_high`); 150 correct sign-ins bring the ratio below 0.4 and clear it
    (one info line)."""
    async with (
        metrics_app(make_settings, migrated_url, login_ip_failures_per_minute=1000) as app,
        client_for(app) as client,
    ):
        email, password, _token = await new_user(client)
        caplog.set_level(logging.INFO, logger="authkeep.metrics")
        alarm_at = None
        for attempt in range(1, 101):
            assert (await sign_in(client, new_email("stuffed"), WRONG)).status_code == 401
            if alarm_at is None and metrics_for(app).alarm_on:
                alarm_at = attempt
        found = await scrape(client)
        assert found["authkeep_sign_in_failure_alarm"] == {"": 1.0}
        assert alarm_at == ALARM_MIN_ATTEMPTS - 1  # + new_user's own success = 100 judged
        for _ in range(150):
            client.cookies.clear()
            assert (await sign_in(client, email, password)).status_code == 200
        found = await scrape(client)
        assert found["authkeep_sign_in_failure_alarm"] == {"": 0.0}
        assert found["authkeep_sign_in_failure_ratio"][""] < 0.4
    records = [r for r in caplog.records if r.name == "authkeep.metrics"]
    warnings = [r for r in records if r.levelno == logging.WARNING]
    infos = [r for r in records if r.levelno == logging.INFO]
    assert len(warnings) == 1
    assert warnings[0].getMessage().startswith("failed_sign_in_ratio_high: 99 of 100 ")
    assert len(infos) == 1
    assert infos[0].getMessage().startswith("failed_sign_in_ratio_high cleared")
    for record in records:
        assert "@" not in record.getMessage()
    FIGURES.append(
        "CHK-BF-04 alarm: on at 100 judged sign-ins, 99 failed (1 warning); off after 150 more "
        "successes, ratio 100/251 (1 info)"
    )
