"""Account enumeration through the email routes (CHK-EN-01, CHK-EN-02, CHK-EN-03, CHK-PW-08).

- Bodies: forgot-password and verification-by-address answer byte-identically (minus the
  request id) for existing and unknown addresses, 50 trials each, on both engines.
- Rate limits: rapid repeats give the same status sequence and bodies for existing and unknown
  addresses (5 times 202, then 429), 50 trials.
- Timing: over real HTTP on loopback against a real `authkeep serve`, with an SMTP server that
  takes 200 ms to accept each message, the medians for existing and unknown addresses differ by
  less than 5 ms: the mail goes out after the response.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from email_helpers import (
    forgot,
    mail_app,
    make_accounts,
    request_verification,
    smtp_settings,
    without_request_id,
)
from fastapi import FastAPI
from identity_helpers import audit_rows, client_for, new_email, started_app

from authkeep.users.email_flows import MAILS_PER_ACCOUNT_PER_HOUR
from support.secrets_scan import FIGURES
from support.server import ServerProcess
from support.smtp import Mailbox, smtp_mailbox_fixture  # noqa: F401 (the smtp_mailbox fixture)

TRIALS = 50
TIMING_WARMUP = 5
MAIL_DELAY_SECONDS = 0.2
MAX_MEDIAN_DIFFERENCE_SECONDS = 0.005
SETTLE_SECONDS = 0.03


@pytest.fixture
async def roomy(
    migrated_url: str, make_settings, smtp_mailbox: Mailbox
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The per-network mail limit raised, so one test client can run every trial."""
    async with (
        mail_app(
            make_settings, migrated_url, smtp_mailbox, login_ip_failures_per_minute=100_000
        ) as app,
        client_for(app) as client,
    ):
        yield app, client


@pytest.mark.parametrize("flow", ["forgot", "verify"])
async def test_existing_and_unknown_addresses_answer_byte_identically_CHK_EN_01(
    roomy: tuple[FastAPI, httpx.AsyncClient], smtp_mailbox: Mailbox, flow: str
):
    app, client = roomy
    existing = await make_accounts(app, TRIALS)
    unknown = [new_email("nobody") for _ in range(TRIALS)]

    async def ask(email: str) -> httpx.Response:
        if flow == "forgot":
            return await forgot(client, email)
        return await request_verification(client, email=email)

    same = 0
    for trial, (known, nobody) in enumerate(zip(existing, unknown, strict=True)):
        order = (known, nobody) if trial % 2 == 0 else (nobody, known)
        first, second = [await ask(email) for email in order]
        assert first.status_code == 202
        same += without_request_id(first) == without_request_id(second)
    assert same == TRIALS
    assert sorted(r for m in smtp_mailbox.messages for r in m.recipients) == sorted(existing)
    action = "auth.password.forgot" if flow == "forgot" else "auth.verify_email.request"
    outcomes = sorted(e.outcome for e in await audit_rows(app, action))
    assert outcomes == ["sent"] * TRIALS + ["unknown_email"] * TRIALS
    engine = "sqlite" if app.state.database.is_sqlite else "postgresql"
    FIGURES.append(
        f"CHK-EN-01 {flow} ({engine}): {same}/{TRIALS} trials byte-identical "
        "(minus request id and RateLimit-* budget)"
    )


async def test_rate_limit_answers_alike_for_unknown_addresses_CHK_EN_03(
    roomy: tuple[FastAPI, httpx.AsyncClient], smtp_mailbox: Mailbox
):
    """Rapid repeats: 5 mails per address per hour, then 429, keyed by the address alone."""
    app, client = roomy
    existing = await make_accounts(app, TRIALS)
    repeats = MAILS_PER_ACCOUNT_PER_HOUR + 1
    expected = [202] * MAILS_PER_ACCOUNT_PER_HOUR + [429]
    alike = 0
    for known in existing:
        nobody = new_email("nobody")
        known_answers, unknown_answers = [], []
        for _ in range(repeats):
            known_answers.append(await forgot(client, known))
            unknown_answers.append(await forgot(client, nobody))
        assert [r.status_code for r in known_answers] == expected
        assert 3500 <= int(known_answers[-1].headers["retry-after"]) <= 3600
        alike += [(r.status_code, r.content) for r in known_answers] == [
            (r.status_code, r.content) for r in unknown_answers
        ]
    assert alike == TRIALS
    assert len(smtp_mailbox.messages) == TRIALS * MAILS_PER_ACCOUNT_PER_HOUR
    throttled = [
        e for e in await audit_rows(app, "auth.password.forgot") if e.outcome == "throttled"
    ]
    assert len(throttled) == 2 * TRIALS
    engine = "sqlite" if app.state.database.is_sqlite else "postgresql"
    FIGURES.append(
        f"CHK-EN-03 forgot ({engine}): {alike}/{TRIALS} trials with identical status sequences"
    )


def serve_env(url: str, data_dir: Path, mailbox: Mailbox) -> dict[str, str]:
    smtp = smtp_settings(mailbox)
    return {
        "DATABASE_URL": url,
        "AUTHKEEP_DATA_DIR": str(data_dir),
        "AUTHKEEP_SMTP_HOST": smtp["smtp_host"],
        "AUTHKEEP_SMTP_PORT": str(smtp["smtp_port"]),
        "AUTHKEEP_SMTP_STARTTLS": "false",
        "AUTHKEEP_LOGIN_IP_FAILURES_PER_MINUTE": "100000",
        "AUTHKEEP_API_LIMIT_PER_IP": "100000",  # every trial comes from one client
    }


async def timed_forgot(client: httpx.AsyncClient, email: str) -> float:
    started = time.perf_counter()
    response = await client.post("/api/auth/password/forgot", json={"email": email})
    elapsed = time.perf_counter() - started
    assert response.status_code == 202
    return elapsed


async def test_forgot_password_time_does_not_depend_on_the_account_CHK_EN_02(
    migrated_url: str, make_settings, smtp_mailbox: Mailbox, tmp_path: Path
):
    """A real server on loopback; every mail takes the SMTP server 200 ms to accept."""
    smtp_mailbox.delay = MAIL_DELAY_SECONDS
    count = TRIALS + TIMING_WARMUP
    async with started_app(make_settings, migrated_url) as setup_app:
        existing = await make_accounts(setup_app, count)
    unknown = [new_email("nobody") for _ in range(count)]
    timings: dict[str, list[float]] = {"existing": [], "unknown": []}
    with ServerProcess(
        tmp_path, serve_env(migrated_url, tmp_path / "data", smtp_mailbox)
    ) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            for trial in range(count):
                pair = [("existing", existing[trial]), ("unknown", unknown[trial])]
                for kind, email in pair if trial % 2 == 0 else reversed(pair):
                    elapsed = await timed_forgot(client, email)
                    if trial >= TIMING_WARMUP:
                        timings[kind].append(elapsed)
                    # Let the previous request's job finish its database work, so one
                    # request's background job does not land inside the next measurement.
                    await asyncio.sleep(SETTLE_SECONDS)
            await smtp_mailbox.wait_for(count, timeout=30)
        for message in smtp_mailbox.messages:
            message.token()  # registered, so the scan proves the server never logged one
        server.stop()
    assert sorted(r for m in smtp_mailbox.messages for r in m.recipients) == sorted(existing)
    medians = {kind: statistics.median(values) for kind, values in timings.items()}
    difference = abs(medians["existing"] - medians["unknown"])
    engine = migrated_url.split(":", 1)[0].split("+", 1)[0]
    FIGURES.append(
        f"CHK-EN-02 forgot over HTTP ({engine}, 200 ms SMTP): median existing "
        f"{medians['existing'] * 1000:.2f} ms, unknown {medians['unknown'] * 1000:.2f} ms, "
        f"difference {difference * 1000:.2f} ms ({TRIALS} samples each)"
    )
    assert difference < MAX_MEDIAN_DIFFERENCE_SECONDS, medians
