"""TOTP enrolment, confirmation, the seed at rest (CHK-CR-03), the ±1 step window, no code
reuse (RELIABILITY FI-RACE-01 shape for TOTP codes), the fresh-session rule (CHK-SE-06) and
turning MFA off — through the real API on both engines, with a real pyotp authenticator."""

from __future__ import annotations

import base64
import secrets
from datetime import timedelta
from urllib.parse import parse_qsl, unquote, urlsplit

import httpx
import pytest
import time_machine
from fastapi import FastAPI
from identity_helpers import (
    audit_rows,
    bearer,
    cheap_hashing,
    client_for,
    count_rows,
    database,
    new_user,
    sign_in,
    started_app,
    strong_password,
    user_row,
)
from mfa_helpers import (
    START,
    STEP,
    CodeWatch,
    challenge,
    confirm,
    enrol,
    error,
    factor_row,
    mfa_user,
    released_together,
    sign_in_mfa,
    totp,
)
from pydantic import SecretStr

from authkeep.core.ratelimit import MemoryRateLimiter
from authkeep.mfa import crypto
from authkeep.mfa import service as mfa
from authkeep.mfa.models import MfaFactor, RecoveryCode
from authkeep.sessions.models import Session
from support.secrets_scan import FIGURES, SCAN

ROUTE_RACE_TRIALS = 5
SERVICE_RACE_TRIALS = 50


async def test_enrolment_returns_a_seed_and_a_qr_ready_uri(app: FastAPI, client: httpx.AsyncClient):
    email, _password, token = await new_user(client)
    client.cookies.clear()
    response = await enrol(client, token)
    assert response.status_code == 201
    assert response.headers["Cache-Control"] == "no-store"
    body = response.json()
    secret = body["secret"]
    assert len(base64.b32decode(secret)) == 20  # 160 bits (RFC 4226 §4)
    uri = urlsplit(body["otpauth_uri"])
    assert (uri.scheme, uri.netloc) == ("otpauth", "totp")
    assert unquote(uri.path) == f"/authkeep:{email}"
    assert parse_qsl(uri.query) == [
        ("secret", secret),
        ("issuer", "authkeep"),
        ("digits", "6"),
        ("period", "30"),
        ("algorithm", "SHA1"),
    ]
    parsed = totp(secret)
    assert (parsed.digits, parsed.interval) == (6, 30)
    status = await client.get("/api/auth/mfa", headers=bearer(token))
    assert status.json() == {"enabled": False, "confirmed_at": None, "recovery_codes_left": 0}
    events = await audit_rows(app, "auth.mfa.enroll")
    assert [(e.outcome, e.actor) for e in events] == [("success", email)]


async def test_confirm_turns_mfa_on_and_gives_ten_recovery_codes(
    app: FastAPI, client: httpx.AsyncClient, code_watch: CodeWatch
):
    """A wrong code leaves the factor unconfirmed (403); a right one turns MFA on and returns
    10 distinct codes. Afterwards enrolment is refused (409) and so is a second confirm."""
    with time_machine.travel(START, tick=False):
        email, _password, token = await new_user(client)
        client.cookies.clear()
        secret = (await enrol(client, token)).json()["secret"]
        code = code_watch.add(totp(secret).now())
        wrong = code_watch.add(f"{(int(code) + 1) % 1_000_000:06d}")
        assert error(await confirm(client, token, wrong)) == (403, "invalid_mfa_code")
        assert (await client.get("/api/auth/mfa", headers=bearer(token))).json()["enabled"] is False

        confirmed = await confirm(client, token, code)
        assert confirmed.status_code == 200
        codes = confirmed.json()["recovery_codes"]
        assert len(codes) == len(set(codes)) == 10
        status = (await client.get("/api/auth/mfa", headers=bearer(token))).json()
        assert status["enabled"] is True
        assert status["recovery_codes_left"] == 10
        assert status["confirmed_at"].startswith("2031-05-06T12:00:10")

        assert error(await enrol(client, token)) == (409, "mfa_already_enabled")
        assert error(await confirm(client, token, code)) == (409, "mfa_not_pending")
    factor = await factor_row(app, email)
    assert factor is not None
    assert factor.secret_encrypted != secret
    events = await audit_rows(app, "auth.mfa.confirm")
    assert [(e.outcome, e.detail) for e in events] == [
        ("failure", {"reason": "wrong_code"}),
        ("success", {"sessions_ended": 0}),
    ]


async def test_turning_mfa_on_ends_every_other_session_CHK_AC_06(
    app: FastAPI, client: httpx.AsyncClient, code_watch: CodeWatch
):
    """Sessions started before MFA was on never passed a second step: confirming ends all of
    them but the one that confirmed, which just proved the new factor. Every session of an
    account with MFA on has passed it (what the admin MFA requirement relies on)."""
    email, password, token = await new_user(client)
    others = []
    for _ in range(2):
        client.cookies.clear()  # a sign-in ends the session whose cookie it carries
        others.append((await sign_in(client, email, password)).json()["token"])
    client.cookies.clear()
    secret = (await enrol(client, token)).json()["secret"]
    assert (await confirm(client, token, code_watch.add(totp(secret).now()))).status_code == 200
    for other in others:
        assert (await client.get("/api/auth/session", headers=bearer(other))).status_code == 401
    assert (await client.get("/api/auth/session", headers=bearer(token))).status_code == 200
    events = await audit_rows(app, "auth.mfa.confirm")
    assert [(e.outcome, e.detail) for e in events] == [("success", {"sessions_ended": 2})]


async def test_a_new_enrolment_replaces_an_unconfirmed_one(
    app: FastAPI, client: httpx.AsyncClient, code_watch: CodeWatch
):
    """Enrolling again before confirming gives a new seed; the old seed's codes no longer
    confirm anything."""
    with time_machine.travel(START, tick=False):
        _email, _password, token = await new_user(client)
        client.cookies.clear()
        first = (await enrol(client, token)).json()["secret"]
        second = (await enrol(client, token)).json()["secret"]
        assert first != second
        assert await count_rows(app, MfaFactor) == 1
        stale = code_watch.add(totp(first).now())
        assert error(await confirm(client, token, stale)) == (403, "invalid_mfa_code")
        assert (await confirm(client, token, code_watch.add(totp(second).now()))).status_code == 200


async def test_the_seed_is_encrypted_at_rest_CHK_CR_03(
    app: FastAPI, client: httpx.AsyncClient, make_settings
):
    """The stored value is AES-GCM (nonce ‖ ciphertext ‖ tag), not the seed: it decrypts
    only with this server's secret key and only for its own user."""
    email, _password, token = await new_user(client)
    client.cookies.clear()
    secret = (await enrol(client, token)).json()["secret"]
    factor = await factor_row(app, email)
    assert factor is not None
    stored = factor.secret_encrypted
    assert secret not in stored
    assert secret.encode() not in base64.b64decode(stored)
    assert len(base64.b64decode(stored)) == 12 + 32 + 16
    own_key = crypto.seed_key(app.state.settings)
    assert crypto.decrypt_seed(own_key, stored, factor.user_id) == secret

    other = make_settings(secret_key=SecretStr(SCAN.register("another-server-" + "k" * 40)))
    with pytest.raises(crypto.SeedUnreadable):
        crypto.decrypt_seed(crypto.seed_key(other), stored, factor.user_id)
    stranger = (await user_row(app, (await new_user(client))[0])).id
    with pytest.raises(crypto.SeedUnreadable):
        crypto.decrypt_seed(own_key, stored, stranger)
    # Two enrolments of one seed would still differ: the nonce is random.
    assert crypto.encrypt_seed(own_key, secret, factor.user_id) != stored


async def test_a_changed_secret_key_makes_seeds_and_recovery_codes_unusable(
    app: FastAPI,
    client: httpx.AsyncClient,
    migrated_url: str,
    make_settings,
    code_watch: CodeWatch,
):
    """A server with another `AUTHKEEP_SECRET_KEY` cannot read the stored seed: a TOTP code
    gets 500 `mfa_seed_unreadable` (not a wrong-code answer). Recovery code digests are keyed
    with the same secret, so a recovery code is refused too, and not spent: back under the
    original key it still signs in (docs/identity.md, "Secrets at rest")."""
    with time_machine.travel(START, tick=False):
        user = await mfa_user(client, code_watch)
    rotated_key = SCAN.register(f"rotated-secret-key-{secrets.token_hex(16)}")
    async with (
        started_app(make_settings, migrated_url, secret_key=rotated_key) as rotated,
        client_for(rotated) as other,
    ):
        with time_machine.travel(START + STEP, tick=False):
            mfa_token = await challenge(other, user.email, user.password)
            unreadable = await sign_in_mfa(other, mfa_token, user.code())
            assert error(unreadable) == (500, "mfa_seed_unreadable")
            refused = await sign_in_mfa(other, mfa_token, user.recovery_codes[0])
            assert error(refused) == (401, "invalid_mfa_code")
    mfa_token = await challenge(client, user.email, user.password)
    assert (await sign_in_mfa(client, mfa_token, user.recovery_codes[0])).status_code == 200


async def test_one_step_either_side_is_accepted_two_are_not(
    app: FastAPI, client: httpx.AsyncClient, code_watch: CodeWatch
):
    """Codes of now ±1 step (30 s) are accepted, ±2 are not; and once a step is accepted,
    codes of that step or earlier ones are refused too."""
    with time_machine.travel(START, tick=False) as traveller:
        user = await mfa_user(client, code_watch)
        traveller.shift(10 * STEP)
        now = START + 10 * STEP
        first = await challenge(client, user.email, user.password)
        for far in (-2, 2):
            refused = await sign_in_mfa(client, first, user.code(now + far * STEP))
            assert error(refused) == (401, "invalid_mfa_code")
        assert (await sign_in_mfa(client, first, user.code(now - STEP))).status_code == 200

        second = await challenge(client, user.email, user.password)
        assert (await sign_in_mfa(client, second, user.code(now + STEP))).status_code == 200

        # Step `now` lies inside the window, but is older than the last accepted one.
        third = await challenge(client, user.email, user.password)
        assert error(await sign_in_mfa(client, third, user.code(now))) == (401, "invalid_mfa_code")
    factor = await factor_row(app, user.email)
    assert factor is not None
    assert factor.last_used_step == crypto.current_step((now + STEP).timestamp())


async def test_sixteen_concurrent_uses_of_one_code_give_one_session_FI_RACE_01(
    app: FastAPI, client: httpx.AsyncClient, migrated_url: str, code_watch: CodeWatch
):
    """16 challenges, one TOTP code, all sent at once: exactly one session, in every trial.
    Passwords use test-only argon2 parameters (1 MiB, t=1; `cheap_hashing`) so each trial's 16
    password sign-ins are fast; the code check itself is what races. Attempts past the
    account's budget of wrong codes get 429 before their code is checked."""
    app.state.passwords.close()
    app.state.passwords = cheap_hashing(queue_limit=256)
    with time_machine.travel(START, tick=False) as traveller:
        user = await mfa_user(client, code_watch)
        user_id = (await user_row(app, user.email)).id
        for trial in range(ROUTE_RACE_TRIALS):
            traveller.shift(STEP)
            app.state.limiter = MemoryRateLimiter()  # each trial starts with a full budget
            tokens = [await challenge(client, user.email, user.password) for _ in range(16)]
            before = await count_rows(app, Session, Session.user_id == user_id)
            code = user.code()

            async def attempt(index: int, tokens: list[str] = tokens, code: str = code) -> int:
                return (await sign_in_mfa(client, tokens[index], code)).status_code

            statuses = await released_together(16, attempt)
            assert statuses[200] == 1, (trial, statuses)
            assert set(statuses) <= {200, 401, 429}
            assert await count_rows(app, Session, Session.user_id == user_id) == before + 1
    engine = "sqlite" if migrated_url.startswith("sqlite") else "postgresql"
    FIGURES.append(
        f"FI-RACE-01 TOTP code via sign-in/mfa {engine}: {ROUTE_RACE_TRIALS} trials x 16 "
        f"concurrent -> exactly 1 session in {ROUTE_RACE_TRIALS}/{ROUTE_RACE_TRIALS}"
    )


async def test_sixteen_concurrent_checks_of_one_code_accept_it_once_FI_RACE_01(
    app: FastAPI, client: httpx.AsyncClient, migrated_url: str, code_watch: CodeWatch
):
    """The conditional UPDATE itself: 16 units of work check one code at once, released
    together, 50 trials: exactly one accepts it in every trial."""
    settings = app.state.settings
    with time_machine.travel(START, tick=False) as traveller:
        user = await mfa_user(client, code_watch)
        user_id = (await user_row(app, user.email)).id
        wins = []
        for _trial in range(SERVICE_RACE_TRIALS):
            traveller.shift(STEP)
            code = user.code()

            async def attempt(_index: int, code: str = code) -> int:
                async with database(app).session_scope() as db:
                    return int(await mfa.use_totp(db, user_id, code, settings))

            wins.append((await released_together(16, attempt))[1])
    assert wins == [1] * SERVICE_RACE_TRIALS
    engine = "sqlite" if migrated_url.startswith("sqlite") else "postgresql"
    FIGURES.append(
        f"FI-RACE-01 TOTP code (service) {engine}: {SERVICE_RACE_TRIALS} trials x 16 "
        f"concurrent -> exactly 1 accepted in {wins.count(1)}/{SERVICE_RACE_TRIALS}"
    )


async def test_mfa_routes_need_a_fresh_session_CHK_SE_06(
    app: FastAPI, client: httpx.AsyncClient, code_watch: CodeWatch
):
    """Enrol, disable and new recovery codes answer 403 `reauth_required` once the session is
    older than the freshness window; status and confirm do not need a fresh session."""
    with time_machine.travel(START, tick=False) as traveller:
        user = await mfa_user(client, code_watch)
        traveller.shift(timedelta(minutes=app.state.settings.session_fresh_minutes, seconds=1))
        headers = bearer(user.token)
        code = user.code()
        stale = [
            await client.post("/api/auth/mfa/totp/enroll", headers=headers),
            await client.post(
                "/api/auth/mfa/totp/disable",
                json={"password": user.password, "code": code},
                headers=headers,
            ),
            await client.post("/api/auth/mfa/recovery-codes", json={"code": code}, headers=headers),
        ]
        for response in stale:
            SCAN.record("stale mfa route", response.text)
            assert error(response) == (403, "reauth_required")
        assert (await client.get("/api/auth/mfa", headers=headers)).json()["enabled"] is True


async def disable(
    client: httpx.AsyncClient, token: str, password: str, **code: str
) -> httpx.Response:
    response = await client.post(
        "/api/auth/mfa/totp/disable", json={"password": password, **code}, headers=bearer(token)
    )
    SCAN.record("disable response", response.text)
    return response


async def test_disable_needs_the_password_and_a_code(
    app: FastAPI, client: httpx.AsyncClient, code_watch: CodeWatch
):
    """A wrong password (403 `invalid_current_password`) or a wrong code (403
    `invalid_mfa_code`) leaves MFA on. Password and code turn it off: the factor and the
    recovery codes are deleted, and the password alone signs in again."""
    with time_machine.travel(START, tick=False) as traveller:
        user = await mfa_user(client, code_watch)
        traveller.shift(STEP)
        wrong_password = await disable(client, user.token, strong_password(), code=user.code())
        assert error(wrong_password) == (403, "invalid_current_password")
        wrong_code = code_watch.add(f"{(int(user.code()) + 5) % 1_000_000:06d}")
        assert error(await disable(client, user.token, user.password, code=wrong_code)) == (
            403,
            "invalid_mfa_code",
        )
        both = await client.post(
            "/api/auth/mfa/totp/disable",
            json={"password": user.password, "code": user.code(), "recovery_code": "x"},
            headers=bearer(user.token),
        )
        assert error(both) == (422, "validation_error")
        status = await client.get("/api/auth/mfa", headers=bearer(user.token))
        assert status.json()["enabled"] is True

        done = await disable(client, user.token, user.password, code=user.code())
        assert done.status_code == 200
        assert done.json() == {"enabled": False, "confirmed_at": None, "recovery_codes_left": 0}
        assert error(await disable(client, user.token, user.password, code=user.code())) == (
            409,
            "mfa_not_enabled",
        )
    assert await factor_row(app, user.email) is None
    assert await count_rows(app, RecoveryCode) == 0
    assert (await user_row(app, user.email)).failed_login_count == 0
    client.cookies.clear()
    assert "token" in (await sign_in(client, user.email, user.password)).json()
    events = await audit_rows(app, "auth.mfa.disable")
    assert [(e.outcome, e.detail) for e in events] == [
        ("failure", {"reason": "wrong_password"}),
        ("failure", {"reason": "wrong_code"}),
        ("success", {"factor": "totp"}),
    ]


async def test_disable_is_refused_while_the_password_is_only_long_enough_with_mfa(
    app: FastAPI, client: httpx.AsyncClient, code_watch: CodeWatch
):
    """With MFA a password may be 8 characters (`password_min_length_with_mfa`). Turning MFA
    off would leave that short password as the only factor, so it is refused (422
    `password_too_short`) until the password is changed; the code is not spent."""
    with time_machine.travel(START, tick=False) as traveller:
        user = await mfa_user(client, code_watch)
        short = SCAN.register("Qx7#vB2p!")
        changed = await client.post(
            "/api/auth/password/change",
            json={"current_password": user.password, "new_password": short},
            headers=bearer(user.token),
        )
        assert changed.status_code == 200, changed.text
        traveller.shift(STEP)
        code = user.code()
        refused = await disable(client, user.token, short, code=code)
        assert error(refused) == (422, "password_too_short")
        assert (await factor_row(app, user.email)) is not None
        # The code was not spent: it still signs in.
        mfa_token = await challenge(client, user.email, short)
        assert (await sign_in_mfa(client, mfa_token, code)).status_code == 200
    events = await audit_rows(app, "auth.mfa.disable")
    assert [(e.outcome, e.detail) for e in events] == [
        ("failure", {"reason": "password_too_short"})
    ]


async def test_nothing_is_enrolled_without_a_session(app: FastAPI, client: httpx.AsyncClient):
    """Every MFA route needs a session; the second sign-in step is the only open one."""
    for path in ("/api/auth/mfa/totp/enroll", "/api/auth/mfa/totp/confirm"):
        response = await client.post(path, json={"code": "123456"})
        assert error(response) == (401, "unauthorized")
    assert error(await client.get("/api/auth/mfa")) == (401, "unauthorized")
    assert await count_rows(app, MfaFactor) == 0
