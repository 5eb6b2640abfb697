"""FI-RACE-01 for the emailed single-use tokens: 16 concurrent uses of one token, released
together by an `asyncio.Barrier`, 50 trials, SQLite and PostgreSQL → exactly one success in
every trial, the other 15 get the one `invalid_token` answer.

The reset race goes through the real route, so every contender also hashes its password:
test-only cheap argon2 parameters (1 MiB, t=1) are swapped into `app.state.passwords` to keep
800 hashes per engine fast. Tokens are issued through `one_time.issue` (the forgot route's
per-account limit allows 5 mails an hour, and the mail path has its own tests).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import timedelta

import httpx
from email_helpers import confirm, mail_app, make_accounts, reset
from fastapi import FastAPI
from identity_helpers import client_for, database, sign_in, strong_password, user_row

from authkeep.users import one_time
from support.secrets_scan import FIGURES, SCAN
from support.smtp import Mailbox, smtp_mailbox_fixture  # noqa: F401 (the smtp_mailbox fixture)

TRIALS = 50
CONTENDERS = 16


async def issue(app: FastAPI, email: str, purpose: str) -> str:
    user = await user_row(app, email)
    async with database(app).session_scope() as db:
        token = await one_time.issue(db, purpose, timedelta(minutes=30), user_id=user.id)
    return SCAN.register(token)


async def race(use: Callable[[], Awaitable[httpx.Response]]) -> Counter[tuple[int, str]]:
    """Start CONTENDERS uses of one token at the same instant; count (status, error)."""
    barrier = asyncio.Barrier(CONTENDERS)

    async def contender() -> httpx.Response:
        await barrier.wait()
        return await use()

    responses = await asyncio.gather(*(contender() for _ in range(CONTENDERS)))
    return Counter((r.status_code, r.json().get("error", "")) for r in responses)


def exactly_one(outcome: Counter[tuple[int, str]]) -> bool:
    return outcome == Counter({(200, ""): 1, (400, "invalid_token"): CONTENDERS - 1})


async def test_one_reset_token_16_ways_exactly_one_success_FI_RACE_01(
    migrated_url: str, make_settings, smtp_mailbox: Mailbox
):
    async with (
        mail_app(make_settings, migrated_url, smtp_mailbox, cheap=True) as app,
        client_for(app) as client,
    ):
        [email] = await make_accounts(app, 1, "race")
        started = time.perf_counter()
        results = []
        for _trial in range(TRIALS):
            token, password = await issue(app, email, one_time.RESET_PASSWORD), strong_password()
            outcome = await race(lambda t=token, p=password: reset(client, t, p))
            results.append(exactly_one(outcome) or outcome)
        assert results == [True] * TRIALS
        # The winner's password is the account's password now.
        assert (await sign_in(client, email, password)).status_code == 200
        engine = "sqlite" if app.state.database.is_sqlite else "postgresql"
        FIGURES.append(
            f"FI-RACE-01 reset token ({engine}): {TRIALS}/{TRIALS} trials with exactly 1 of "
            f"{CONTENDERS} succeeding ({time.perf_counter() - started:.1f} s)"
        )


async def test_one_verification_token_16_ways_exactly_one_success_FI_RACE_01(
    migrated_url: str, make_settings, smtp_mailbox: Mailbox
):
    async with (
        mail_app(make_settings, migrated_url, smtp_mailbox) as app,
        client_for(app) as client,
    ):
        [email] = await make_accounts(app, 1, "race")
        results = []
        for _trial in range(TRIALS):
            token = await issue(app, email, one_time.VERIFY_EMAIL)
            outcome = await race(lambda t=token: confirm(client, t))
            results.append(exactly_one(outcome) or outcome)
        assert results == [True] * TRIALS
        assert (await user_row(app, email)).email_verified_at is not None
        engine = "sqlite" if app.state.database.is_sqlite else "postgresql"
        FIGURES.append(
            f"FI-RACE-01 verification token ({engine}): {TRIALS}/{TRIALS} trials with exactly 1 "
            f"of {CONTENDERS} succeeding"
        )
