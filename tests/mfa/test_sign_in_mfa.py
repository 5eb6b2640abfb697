"""The second sign-in step, `POST /api/auth/sign-in/mfa`, through the real API on both engines
with real argon2id and a real pyotp authenticator: the whole journey, what a wrong code costs
(never the challenge, at most 5 per challenge, 10 per account), single-use challenges, login
CSRF, and that the session routes do not change."""

from __future__ import annotations

from datetime import timedelta

import httpx
import time_machine
from fastapi import FastAPI
from identity_helpers import audit_rows, bearer, count_rows, sign_in, user_row
from mfa_helpers import (
    START,
    STEP,
    CodeWatch,
    challenge,
    error,
    mfa_audit,
    mfa_user,
    sign_in_mfa,
)

from authkeep.core.ratelimit import MemoryRateLimiter
from authkeep.sessions.models import Session
from support.secrets_scan import SCAN


async def test_enrol_confirm_sign_out_and_sign_in_with_a_code(
    app: FastAPI, client: httpx.AsyncClient, code_watch: CodeWatch
):
    """The journey: enrol → confirm → sign out → sign-in answers `mfa_required` (no cookie, no
    token) → wrong code 401 → right code → a session. The code that confirmed the factor is
    already spent, and the same code cannot sign in twice (replay)."""
    with time_machine.travel(START, tick=False) as traveller:
        user = await mfa_user(client, code_watch)
        out = await client.post("/api/auth/sign-out", headers=bearer(user.token))
        assert out.status_code == 204

        mfa_token = await challenge(client, user.email, user.password)
        confirm_code = user.code()  # the step that confirmed the factor
        assert error(await sign_in_mfa(client, mfa_token, confirm_code)) == (
            401,
            "invalid_mfa_code",
        )
        traveller.shift(STEP)
        wrong = code_watch.add(f"{(int(user.code()) + 1) % 1_000_000:06d}")
        refused = await sign_in_mfa(client, mfa_token, wrong)
        assert error(refused) == (401, "invalid_mfa_code")
        assert "set-cookie" not in refused.headers

        code = user.code()
        response = await sign_in_mfa(client, mfa_token, code)
        body = response.json()
        assert response.status_code == 200, response.text
        assert body["token_type"] == "bearer"
        assert body["user"]["email"] == user.email
        assert body["session"]["current"] is True
        assert f"authkeep_session={body['token']}" in response.headers["set-cookie"]
        assert response.headers["Cache-Control"] == "no-store"

        # Replay: the same code on a second sign-in, inside the same step, is refused.
        replay_token = await challenge(client, user.email, user.password)
        assert error(await sign_in_mfa(client, replay_token, code)) == (401, "invalid_mfa_code")
        traveller.shift(STEP)
        assert (await sign_in_mfa(client, replay_token, user.code())).status_code == 200

    events = await audit_rows(app, "auth.sign_in.mfa")
    assert [(e.outcome, e.detail) for e in events] == [
        ("failure", {"reason": "wrong_code"}),
        ("failure", {"reason": "wrong_code"}),
        ("success", {"factor": "totp"}),
        ("failure", {"reason": "wrong_code"}),
        ("success", {"factor": "totp"}),
    ]
    sign_ins = [(e.outcome, e.detail) for e in await audit_rows(app, "auth.sign_in")]
    assert sign_ins[-4:] == [
        ("mfa_required", {"method": "password"}),
        ("success", {"method": "mfa"}),
        ("mfa_required", {"method": "password"}),
        ("success", {"method": "mfa"}),
    ]
    rows = await mfa_audit(app)
    secrets_used = {user.secret, *user.recovery_codes, *code_watch.codes}
    assert not [r for r in rows if any(s in f"{r.detail} {r.target}" for s in secrets_used)]


async def test_the_session_routes_work_the_same_after_mfa(
    app: FastAPI, client: httpx.AsyncClient, code_watch: CodeWatch
):
    """Turning MFA on does not end the session that did it; a session started through the
    MFA step answers `/session` and `/sessions` like any other."""
    with time_machine.travel(START, tick=False) as traveller:
        user = await mfa_user(client, code_watch)
        before = await client.get("/api/auth/session", headers=bearer(user.token))
        assert before.status_code == 200
        assert set(before.json()) == {"user", "session", "csrf_token"}

        traveller.shift(STEP)
        mfa_token = await challenge(client, user.email, user.password)
        token = (await sign_in_mfa(client, mfa_token, user.code())).json()["token"]
        client.cookies.clear()
        me = await client.get("/api/auth/session", headers=bearer(token))
        assert me.status_code == 200
        assert set(me.json()) == {"user", "session", "csrf_token"}
        assert me.json()["user"]["email"] == user.email
        listed = await client.get("/api/auth/sessions", headers=bearer(token))
        assert listed.status_code == 200
        assert [s["current"] for s in listed.json()] == [True, False]
        still = await client.get("/api/auth/session", headers=bearer(user.token))
        assert still.status_code == 200


async def test_a_wrong_code_keeps_the_challenge_and_five_kill_it(
    app: FastAPI, client: httpx.AsyncClient, code_watch: CodeWatch
):
    """Wrong codes do not burn the challenge (the right one still works after 4), but the 5th
    wrong code ends it: from then on even the right code gets 401. A new sign-in works."""
    with time_machine.travel(START + STEP, tick=False):
        user = await mfa_user(client, code_watch)
    with time_machine.travel(START + 3 * STEP, tick=False):
        wrong = code_watch.add(f"{(int(user.code()) + 7) % 1_000_000:06d}")
        kept = await challenge(client, user.email, user.password)
        for _ in range(4):
            assert error(await sign_in_mfa(client, kept, wrong)) == (401, "invalid_mfa_code")
        assert (await sign_in_mfa(client, kept, user.code())).status_code == 200

    with time_machine.travel(START + 5 * STEP, tick=False):
        killed = await challenge(client, user.email, user.password)
        statuses = [error(await sign_in_mfa(client, killed, wrong)) for _ in range(5)]
        assert statuses == [(401, "invalid_mfa_code")] * 4 + [(401, "mfa_challenge_invalid")]
        right = await sign_in_mfa(client, killed, user.code())
        assert error(right) == (401, "mfa_challenge_invalid")
        fresh = await challenge(client, user.email, user.password)
        assert (await sign_in_mfa(client, fresh, user.code())).status_code == 200
    events = await audit_rows(app, "auth.sign_in.mfa")
    failures = [e.detail for e in events if e.outcome != "success"]
    assert failures.count({"reason": "wrong_code"}) == 9
    assert failures.count({"reason": "invalid_challenge"}) == 1


async def test_ten_wrong_codes_per_account_answer_429_and_keep_the_challenge(
    app: FastAPI, client: httpx.AsyncClient, code_watch: CodeWatch
):
    """Per account, at most 10 wrong codes in 15 minutes, whatever the challenge: the next
    attempt gets 429 with Retry-After and is not judged (the challenge survives it)."""
    with time_machine.travel(START, tick=False) as traveller:
        user = await mfa_user(client, code_watch)
        traveller.shift(STEP)
        wrong = code_watch.add(f"{(int(user.code()) + 3) % 1_000_000:06d}")
        for _ in range(2):
            spent = await challenge(client, user.email, user.password)
            for _ in range(5):
                assert (await sign_in_mfa(client, spent, wrong)).status_code == 401
        mfa_token = await challenge(client, user.email, user.password)
        throttled = await sign_in_mfa(client, mfa_token, user.code())
        assert error(throttled) == (429, "rate_limited")
        assert int(throttled.headers["Retry-After"]) > 0
        app.state.limiter = MemoryRateLimiter()  # the window passes
        assert (await sign_in_mfa(client, mfa_token, user.code())).status_code == 200
    outcomes = [e.outcome for e in await audit_rows(app, "auth.sign_in.mfa")]
    assert outcomes.count("throttled") == 1


async def test_the_challenge_is_single_use_and_expires(
    app: FastAPI, client: httpx.AsyncClient, code_watch: CodeWatch
):
    """An unknown, used or expired (5 min) challenge is 401 `mfa_challenge_invalid`; the
    challenge token is not a session token."""
    with time_machine.travel(START, tick=False) as traveller:
        user = await mfa_user(client, code_watch)
        traveller.shift(STEP)
        unknown = SCAN.register("not-a-challenge-token-at-all-0123456789")
        assert error(await sign_in_mfa(client, unknown, user.code())) == (
            401,
            "mfa_challenge_invalid",
        )
        mfa_token = await challenge(client, user.email, user.password)
        assert (await client.get("/api/auth/session", headers=bearer(mfa_token))).status_code == 401
        assert (await sign_in_mfa(client, mfa_token, user.code())).status_code == 200
        traveller.shift(STEP)
        used = await sign_in_mfa(client, mfa_token, user.code())
        assert error(used) == (401, "mfa_challenge_invalid")

        expiring = await challenge(client, user.email, user.password)
        traveller.shift(timedelta(minutes=5, seconds=1))
        expired = await sign_in_mfa(client, expiring, user.code())
        assert error(expired) == (401, "mfa_challenge_invalid")
    user_id = (await user_row(app, user.email)).id
    assert await count_rows(app, Session, Session.user_id == user_id) == 2


async def test_a_cross_site_form_cannot_finish_the_sign_in_CHK_CK_03(
    app: FastAPI, client: httpx.AsyncClient, code_watch: CodeWatch
):
    """Login CSRF applies to the second step as to the first."""
    with time_machine.travel(START, tick=False) as traveller:
        user = await mfa_user(client, code_watch)
        traveller.shift(STEP)
        mfa_token = await challenge(client, user.email, user.password)
        cross = await sign_in_mfa(
            client, mfa_token, user.code(), headers={"Sec-Fetch-Site": "cross-site"}
        )
        assert error(cross) == (403, "csrf_rejected")
        same = await sign_in_mfa(
            client, mfa_token, user.code(), headers={"Sec-Fetch-Site": "same-origin"}
        )
        assert same.status_code == 200


async def test_a_password_sign_in_without_mfa_is_unchanged(client: httpx.AsyncClient):
    """Users without a confirmed factor get a session from the password alone."""
    from identity_helpers import new_email, sign_up, strong_password

    email, password = new_email(), strong_password()
    await sign_up(client, email, password)
    response = await sign_in(client, email, password)
    assert response.status_code == 200
    assert "token" in response.json()
