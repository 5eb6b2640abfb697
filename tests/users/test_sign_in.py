"""Sign-up and sign-in through the real API on both engines, with real argon2id: the session
they give, rehash on login (CHK-PS-02), refusals after a correct password (CHK-PW-06,
require_verified_email), the MFA hand-off, canonical emails (BI-10) and the audit trail."""

from __future__ import annotations

import base64
import uuid
from datetime import timedelta

import httpx
import pytest
from argon2 import PasswordHasher, Type
from fastapi import FastAPI, Response
from identity_helpers import (
    audit_rows,
    bearer,
    client_for,
    count_rows,
    database,
    new_email,
    new_user,
    sign_in,
    sign_up,
    started_app,
    strong_password,
    user_row,
)
from sqlalchemy import select, update
from starlette.requests import Request

from authkeep.audit.models import AuditEvent
from authkeep.core.models import utcnow
from authkeep.mfa.models import MfaFactor
from authkeep.users import one_time
from authkeep.users import service as users
from authkeep.users.models import User
from authkeep.users.passwords import normalize
from support.secrets_scan import SCAN


async def test_sign_up_then_sign_in_gives_a_working_bearer_token_and_cookie(
    client: httpx.AsyncClient,
):
    email, password = new_email(), strong_password()
    accepted = await sign_up(client, email, password, name="Ada")
    assert accepted.status_code == 202
    assert accepted.json()["status"] == "accepted"
    assert "set-cookie" not in accepted.headers  # sign-up never signs in

    response = await sign_in(client, email.upper(), password)
    body = response.json()
    assert response.status_code == 200
    assert body["token_type"] == "bearer"
    assert body["user"]["email"] == email
    assert body["user"]["name"] == "Ada"
    assert body["session"]["current"] is True
    assert response.headers["Cache-Control"] == "no-store"
    assert f"authkeep_session={body['token']}" in response.headers["set-cookie"]

    client.cookies.clear()
    me = await client.get("/api/auth/session", headers=bearer(body["token"]))
    assert me.status_code == 200
    assert me.json()["user"]["id"] == body["user"]["id"]


async def test_session_route_without_credentials_is_401(client: httpx.AsyncClient):
    response = await client.get("/api/auth/session")
    assert (response.status_code, response.json()["error"]) == (401, "unauthorized")


async def test_stored_hashes_are_argon2id_at_policy_parameters_CHK_PS_01(
    app: FastAPI, client: httpx.AsyncClient
):
    """Every stored PHC string: argon2id, m ≥ 19456, t ≥ 2, p = 1, salt ≥ 16 bytes; the same
    password for two users gives two different hashes."""
    password = strong_password()
    first, second = new_email(), new_email()
    for email in (first, second):
        assert (await sign_up(client, email, password)).status_code == 202
    hashes = [(await user_row(app, e)).password_hash for e in (first, second)]
    assert hashes[0] != hashes[1]
    for stored in hashes:
        assert stored is not None
        algorithm, version, params, salt, _digest = stored.split("$")[1:]
        values = dict(item.split("=") for item in params.split(","))
        assert (algorithm, version) == ("argon2id", "v=19")
        assert int(values["m"]) >= 19456
        assert int(values["t"]) >= 2
        assert values["p"] == "1"
        padded = salt + "=" * (-len(salt) % 4)
        assert len(base64.b64decode(padded)) >= 16


async def _seed_weak_hash(app: FastAPI, email: str, password: str) -> str:
    weak = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1, type=Type.ID)
    stored = weak.hash(normalize(password))
    async with database(app).session_scope() as db:
        await users.create_user(db, email, password_hash=stored)
    return stored


async def test_sign_in_rehashes_old_parameters_and_failures_never_rewrite_CHK_PS_02(
    app: FastAPI, client: httpx.AsyncClient
):
    email, password = new_email(), strong_password()
    weak = await _seed_weak_hash(app, email, password)

    assert (await sign_in(client, email, password + "x")).status_code == 401
    assert (await user_row(app, email)).password_hash == weak

    assert (await sign_in(client, email, password)).status_code == 200
    upgraded = (await user_row(app, email)).password_hash
    assert upgraded is not None
    assert upgraded != weak
    assert "m=19456,t=2,p=1" in upgraded
    # The upgraded hash still verifies, and is not rewritten again.
    assert (await sign_in(client, email, password)).status_code == 200
    assert (await user_row(app, email)).password_hash == upgraded


async def test_password_reset_required_is_told_only_after_a_correct_password_CHK_PW_06(
    app: FastAPI, client: httpx.AsyncClient
):
    email, password, _token = await new_user(client)
    async with database(app).session_scope() as db:
        await db.execute(
            update(User).where(User.email == email).values(password_reset_required=True)
        )
    wrong = await sign_in(client, email, strong_password())
    assert (wrong.status_code, wrong.json()["error"]) == (401, "invalid_credentials")
    right = await sign_in(client, email, password)
    assert (right.status_code, right.json()["error"]) == (403, "password_reset_required")
    assert "set-cookie" not in right.headers
    assert (await user_row(app, email)).failed_login_count == 0


@pytest.mark.parametrize("require", [True, False])
async def test_unverified_users_sign_in_only_when_allowed(
    migrated_url: str, make_settings, require: bool
):
    async with (
        started_app(make_settings, migrated_url, require_verified_email=require) as app,
        client_for(app) as client,
    ):
        email, password = new_email(), strong_password()
        await sign_up(client, email, password)
        response = await sign_in(client, email, password)
        if require:
            assert (response.status_code, response.json()["error"]) == (
                403,
                "email_not_verified",
            )
            async with database(app).session_scope() as db:
                await db.execute(
                    update(User).where(User.email == email).values(email_verified_at=utcnow())
                )
            response = await sign_in(client, email, password)
        assert response.status_code == 200


async def test_mfa_users_get_a_challenge_not_a_session(app: FastAPI, client: httpx.AsyncClient):
    """The MFA contract: a correct password for a user with a confirmed factor answers
    `mfa_required` with a single-use `mfa_challenge` token and starts no session."""
    email, password = new_email(), strong_password()
    await sign_up(client, email, password)
    user = await user_row(app, email)
    async with database(app).session_scope() as db:
        db.add(MfaFactor(user_id=user.id, secret_encrypted="x", confirmed_at=utcnow()))
    client.cookies.clear()
    response = await sign_in(client, email, password)
    body = response.json()
    assert response.status_code == 200
    assert body["mfa_required"] is True
    assert "token" not in body
    assert "set-cookie" not in response.headers
    async with database(app).session_scope() as db:
        claimed = await one_time.consume(db, body["mfa_token"], "mfa_challenge")
        assert claimed is not None
        assert claimed.user_id == user.id
        lifetime = claimed.expires_at - claimed.created_at
        assert abs(lifetime - timedelta(minutes=5)) < timedelta(seconds=1)
    assert [e.outcome for e in await audit_rows(app, "auth.sign_in")] == ["mfa_required"]


async def test_complete_sign_in_is_usable_by_the_mfa_step(app: FastAPI, client: httpx.AsyncClient):
    """`users.service.complete_sign_in` with the Database starts a session and audits it."""
    email, password = new_email(), strong_password()
    await sign_up(client, email, password)
    user = await user_row(app, email)
    scope = {"type": "http", "method": "POST", "path": "/", "headers": [], "app": app}
    scope["client"] = ("127.0.0.1", 1)
    response = Response()
    result = await users.complete_sign_in(
        database(app), Request(scope), response, user, app.state.settings, method="mfa"
    )
    SCAN.register(result.token)
    assert result.user.id == user.id
    assert result.token in response.headers["set-cookie"]
    me = await client.get("/api/auth/session", headers=bearer(result.token))
    assert me.status_code == 200
    events = await audit_rows(app, "auth.sign_in")
    assert [(e.outcome, e.detail) for e in events] == [("success", {"method": "mfa"})]


@pytest.mark.parametrize(
    "variant",
    [
        "ALICE@EXAMPLE.COM",
        " alice@Example.Com ",
        "\uff41\uff4c\uff49\uff43\uff45@example.com",  # full-width letters
        "alice@example.com.",
    ],
)
async def test_email_variants_are_one_account_BI_10(
    app: FastAPI, client: httpx.AsyncClient, variant: str
):
    password = strong_password()
    await sign_up(client, "alice@example.com", password)
    again = await sign_up(client, variant, strong_password())
    assert again.status_code == 202
    assert await count_rows(app, User) == 1
    assert (await sign_in(client, variant, password)).status_code == 200


async def test_nfc_and_nfd_spellings_are_one_account_BI_10(app: FastAPI, client: httpx.AsyncClient):
    password = strong_password()
    nfc, nfd = "ren\u00e9@b\u00fccher.example", "rene\u0301@bu\u0308cher.example"
    await sign_up(client, nfc, password)
    await sign_up(client, nfd, strong_password())
    await sign_up(client, "REN\u00c9@xn--bcher-kva.example", strong_password())
    assert await count_rows(app, User) == 1
    assert (await user_row(app, "ren\u00e9@xn--bcher-kva.example")).email
    assert (await sign_in(client, nfd, password)).status_code == 200


@pytest.mark.parametrize(
    "email",
    ["nul\x00@example.com", "a b@example.com", "zero\u200bwidth@example.com", "no-at-sign", ""],
)
async def test_bad_emails_are_422_never_5xx_BI_10(client: httpx.AsyncClient, email: str):
    for path in ("/api/auth/sign-up", "/api/auth/sign-in"):
        response = await client.post(path, json={"email": email, "password": strong_password()})
        assert (response.status_code, response.json()["error"]) == (422, "validation_error")


async def test_unknown_fields_are_refused(client: httpx.AsyncClient):
    response = await sign_up(client, new_email(), strong_password(), role="admin")
    assert (response.status_code, response.json()["error"]) == (422, "validation_error")


async def test_sign_in_and_sign_up_are_audited_without_the_password(
    app: FastAPI, client: httpx.AsyncClient
):
    email, password = new_email(), strong_password()
    await sign_up(client, email, password)
    await sign_up(client, email, password)
    await sign_in(client, email, password)
    await sign_in(client, email, strong_password())
    await sign_in(client, new_email(), password)
    ups = await audit_rows(app, "auth.sign_up")
    assert [(e.outcome, e.detail) for e in ups] == [
        ("success", None),
        ("failure", {"reason": "email_taken"}),
    ]
    ins = await audit_rows(app, "auth.sign_in")
    assert [(e.outcome, (e.detail or {}).get("reason")) for e in ins] == [
        ("success", None),
        ("failure", "wrong_password"),
        ("failure", "unknown_email"),
    ]
    assert all(e.ip == "127.0.0.1" and e.request_id for e in ins)
    async with database(app).session_scope() as db:
        for event in (await db.scalars(select(AuditEvent))).all():
            assert password not in repr(event.__dict__)


async def test_disabled_users_cannot_sign_in(app: FastAPI, client: httpx.AsyncClient):
    email, password, token = await new_user(client)
    async with database(app).session_scope() as db:
        await db.execute(update(User).where(User.email == email).values(disabled_at=utcnow()))
    response = await sign_in(client, email, password)
    assert (response.status_code, response.json()["error"]) == (401, "invalid_credentials")
    client.cookies.clear()
    assert (await client.get("/api/auth/session", headers=bearer(token))).status_code == 401


async def test_user_without_password_cannot_sign_in(app: FastAPI, client: httpx.AsyncClient):
    email = new_email()
    async with database(app).session_scope() as db:
        await users.create_user(db, email, password_hash=None)
    response = await sign_in(client, email, "")
    assert (response.status_code, response.json()["error"]) == (401, "invalid_credentials")


async def test_create_user_refuses_a_taken_canonical_email(app: FastAPI):
    async with database(app).session_scope() as db:
        await users.create_user(db, "Bob@Example.com", password_hash=None)
        with pytest.raises(users.EmailTaken):
            await users.create_user(db, "bob@EXAMPLE.com", password_hash=None)
        found = await users.get_by_email(db, "BOB@example.com")
        assert found is not None
        assert found.email == "bob@example.com"
        assert await users.get(db, uuid.uuid4()) is None
