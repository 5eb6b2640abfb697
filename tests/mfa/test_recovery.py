"""Recovery codes: shown once, stored as digests, single use (RELIABILITY FI-RACE-01 shape),
replaced on request, and accepted to turn MFA off — through the real API on both engines."""

from __future__ import annotations

import httpx
import time_machine
from fastapi import FastAPI
from identity_helpers import (
    audit_rows,
    bearer,
    cheap_hashing,
    count_rows,
    database,
    new_user,
    user_row,
)
from mfa_helpers import (
    RECOVERY_FORMAT,
    START,
    STEP,
    CodeWatch,
    challenge,
    error,
    mfa_user,
    register_recovery_codes,
    released_together,
    sign_in_mfa,
    spend_together,
)
from sqlalchemy import select

from authkeep.core.ratelimit import MemoryRateLimiter
from authkeep.mfa import crypto
from authkeep.mfa import service as mfa
from authkeep.mfa.models import RecoveryCode
from authkeep.sessions.models import Session
from support.secrets_scan import FIGURES, SCAN

ROUTE_RACE_TRIALS = 3
SERVICE_RACE_TRIALS = 50


async def left(client: httpx.AsyncClient, token: str) -> int:
    status = await client.get("/api/auth/mfa", headers=bearer(token))
    return int(status.json()["recovery_codes_left"])


async def regenerate(client: httpx.AsyncClient, token: str, code: str) -> httpx.Response:
    response = await client.post(
        "/api/auth/mfa/recovery-codes", json={"code": code}, headers=bearer(token)
    )
    if response.status_code == 200:
        register_recovery_codes(response.json()["recovery_codes"])
    else:
        SCAN.record("recovery-codes response", response.text)
    return response


async def test_recovery_codes_are_random_and_only_their_digests_are_stored_CHK_CR_01(
    app: FastAPI, client: httpx.AsyncClient, code_watch: CodeWatch
):
    """Ten codes like `xxxxx-xxxxx` over a 32-letter alphabet (50 bits each); the table holds
    ten 64-hex digests and never a code in any spelling."""
    user = await mfa_user(client, code_watch)
    assert all(RECOVERY_FORMAT.fullmatch(code) for code in user.recovery_codes)
    assert len(crypto.RECOVERY_ALPHABET) ** crypto.RECOVERY_LENGTH >= 2**50
    user_id = (await user_row(app, user.email)).id
    async with database(app).session_scope() as db:
        rows = list((await db.scalars(select(RecoveryCode))).all())
    assert len(rows) == 10
    assert all(r.user_id == user_id and r.used_at is None for r in rows)
    stored = " ".join(f"{r.id} {r.code_hash}" for r in rows)
    assert all(len(r.code_hash) == 64 and int(r.code_hash, 16) >= 0 for r in rows)
    for code in user.recovery_codes:
        assert code not in stored
        assert code.replace("-", "") not in stored
    assert await left(client, user.token) == 10


async def test_a_recovery_code_signs_in_once(
    app: FastAPI, client: httpx.AsyncClient, code_watch: CodeWatch
):
    """A recovery code replaces the TOTP code at sign-in, once. Case, spaces and the dash do
    not matter when typing one."""
    user = await mfa_user(client, code_watch)
    first, second = user.recovery_codes[:2]
    mfa_token = await challenge(client, user.email, user.password)
    assert (await sign_in_mfa(client, mfa_token, first)).status_code == 200
    again = await challenge(client, user.email, user.password)
    assert error(await sign_in_mfa(client, again, first)) == (401, "invalid_mfa_code")
    typed = f" {second.upper().replace('-', ' ')} "
    assert (await sign_in_mfa(client, again, typed)).status_code == 200
    assert await left(client, user.token) == 8
    events = await audit_rows(app, "auth.sign_in.mfa")
    assert [(e.outcome, e.detail) for e in events] == [
        ("success", {"factor": "recovery_code"}),
        ("failure", {"reason": "wrong_code"}),
        ("success", {"factor": "recovery_code"}),
    ]


async def test_new_recovery_codes_need_a_totp_code_and_void_the_old_ones(
    app: FastAPI, client: httpx.AsyncClient, code_watch: CodeWatch
):
    """Regenerating needs a current TOTP code (not a recovery code); afterwards the old codes
    are refused and the ten new ones work."""
    with time_machine.travel(START, tick=False) as traveller:
        user = await mfa_user(client, code_watch)
        traveller.shift(STEP)
        wrong = code_watch.add(f"{(int(user.code()) + 2) % 1_000_000:06d}")
        assert error(await regenerate(client, user.token, wrong)) == (403, "invalid_mfa_code")
        with_recovery = await regenerate(client, user.token, user.recovery_codes[0])
        assert error(with_recovery) == (403, "invalid_mfa_code")
        response = await regenerate(client, user.token, user.code())
        assert response.status_code == 200
        fresh = response.json()["recovery_codes"]
        assert len(fresh) == 10
        assert not set(fresh) & set(user.recovery_codes)
        assert await left(client, user.token) == 10

        mfa_token = await challenge(client, user.email, user.password)
        old = await sign_in_mfa(client, mfa_token, user.recovery_codes[1])
        assert error(old) == (401, "invalid_mfa_code")
        assert (await sign_in_mfa(client, mfa_token, fresh[0])).status_code == 200
    events = await audit_rows(app, "auth.mfa.recovery_codes")
    assert [(e.outcome, e.detail) for e in events] == [
        ("failure", {"reason": "wrong_code"}),
        ("failure", {"reason": "wrong_code"}),
        ("success", None),
    ]
    _email, _password, token = await new_user(client)
    client.cookies.clear()
    assert error(await regenerate(client, token, "123456")) == (409, "mfa_not_enabled")


async def test_disable_with_a_recovery_code(
    app: FastAPI, client: httpx.AsyncClient, code_watch: CodeWatch
):
    """Someone who lost the authenticator turns MFA off with the password and a recovery code;
    a used recovery code does not work for this."""
    user = await mfa_user(client, code_watch)
    used = user.recovery_codes[0]
    mfa_token = await challenge(client, user.email, user.password)
    assert (await sign_in_mfa(client, mfa_token, used)).status_code == 200

    async def disable(code: str) -> httpx.Response:
        response = await client.post(
            "/api/auth/mfa/totp/disable",
            json={"password": user.password, "recovery_code": code},
            headers=bearer(user.token),
        )
        SCAN.record("disable response", response.text)
        return response

    assert error(await disable(used)) == (403, "invalid_mfa_code")
    assert (await disable(user.recovery_codes[1])).status_code == 200
    assert await left(client, user.token) == 0
    assert await count_rows(app, RecoveryCode) == 0
    events = await audit_rows(app, "auth.mfa.disable")
    assert events[-1].detail == {"factor": "recovery_code"}


async def test_sixteen_concurrent_uses_of_one_recovery_code_give_one_session_FI_RACE_01(
    app: FastAPI, client: httpx.AsyncClient, migrated_url: str, code_watch: CodeWatch
):
    """16 challenges and one recovery code, sent at once: exactly one session per trial, and
    the code is spent. Passwords use test-only argon2 parameters (1 MiB, t=1;
    `cheap_hashing`) so the 16 password sign-ins per trial are fast."""
    app.state.passwords.close()
    app.state.passwords = cheap_hashing(queue_limit=256)
    user = await mfa_user(client, code_watch)
    user_id = (await user_row(app, user.email)).id
    for trial in range(ROUTE_RACE_TRIALS):
        app.state.limiter = MemoryRateLimiter()
        tokens = [await challenge(client, user.email, user.password) for _ in range(16)]
        before = await count_rows(app, Session, Session.user_id == user_id)
        code = user.recovery_codes[trial]

        async def attempt(index: int, tokens: list[str] = tokens, code: str = code) -> int:
            return (await sign_in_mfa(client, tokens[index], code)).status_code

        statuses = await released_together(16, attempt)
        assert statuses[200] == 1, (trial, statuses)
        assert set(statuses) <= {200, 401, 429}
        assert await count_rows(app, Session, Session.user_id == user_id) == before + 1
    assert await left(client, user.token) == 10 - ROUTE_RACE_TRIALS
    engine = "sqlite" if migrated_url.startswith("sqlite") else "postgresql"
    FIGURES.append(
        f"FI-RACE-01 recovery code via sign-in/mfa {engine}: {ROUTE_RACE_TRIALS} trials x 16 "
        f"concurrent -> exactly 1 session in {ROUTE_RACE_TRIALS}/{ROUTE_RACE_TRIALS}"
    )


async def test_sixteen_concurrent_spends_of_one_recovery_code_succeed_once_FI_RACE_01(
    app: FastAPI, client: httpx.AsyncClient, migrated_url: str, code_watch: CodeWatch
):
    """The conditional UPDATE itself: 16 units of work spend one recovery code at once,
    released together, 50 trials (a new set of codes every 10): exactly one succeeds."""
    user = await mfa_user(client, code_watch)
    user_id = (await user_row(app, user.email)).id
    settings = app.state.settings
    codes: list[str] = []
    wins = []
    for _trial in range(SERVICE_RACE_TRIALS):
        if not codes:
            async with database(app).session_scope() as db:
                codes = register_recovery_codes(
                    await mfa.replace_recovery_codes(db, user_id, settings)
                )
        code = codes.pop()
        wins.append(await spend_together(app, user_id, code))
    assert wins == [1] * SERVICE_RACE_TRIALS
    engine = "sqlite" if migrated_url.startswith("sqlite") else "postgresql"
    FIGURES.append(
        f"FI-RACE-01 recovery code (service) {engine}: {SERVICE_RACE_TRIALS} trials x 16 "
        f"concurrent -> exactly 1 accepted in {wins.count(1)}/{SERVICE_RACE_TRIALS}"
    )
