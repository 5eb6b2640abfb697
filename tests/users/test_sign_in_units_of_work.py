"""What a sign-in writes and when, on both engines with real argon2id: the account is judged
again after the hash (disabled or deleted meanwhile → no session, CHK-SE-05), a success
records `last_login_at`, clears the failure count (CHK-BF-05) and settles the attempt's one
audit row (CHK-LG-01), and session checks never wait for SQLite's write lock (FI-DB-12)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from identity_helpers import (
    audit_rows,
    bearer,
    client_for,
    count_rows,
    database,
    new_user,
    sign_in,
    started_app,
    strong_password,
    user_row,
)
from sqlalchemy import func, select, update

from authkeep.config import Settings
from authkeep.core.models import utcnow
from authkeep.core.security import PasswordHashing
from authkeep.sessions.models import Session
from authkeep.users.models import User


class ChangeDuringHash(PasswordHashing):
    """The real hasher; runs `during` (once) while the next verification's argon2 job runs,
    with no connection held by the sign-in."""

    during: Callable[[], Any] | None = None

    async def verify(self, stored: str | None, password: str) -> tuple[bool, bool]:
        change, self.during = self.during, None
        verdict = asyncio.ensure_future(super().verify(stored, password))
        if change is not None:
            await change()
        return await verdict


@pytest.fixture
async def changing(
    migrated_url: str, make_settings: Callable[..., Settings]
) -> AsyncIterator[tuple[FastAPI, ChangeDuringHash]]:
    async with started_app(make_settings, migrated_url) as app:
        app.state.passwords.close()
        hasher = ChangeDuringHash(workers=2)
        app.state.passwords = hasher
        try:
            yield app, hasher
        finally:
            hasher.close()


async def _user_sessions(app: FastAPI, email: str) -> int:
    user = await user_row(app, email)
    return await count_rows(app, Session, Session.user_id == user.id)


@pytest.mark.parametrize("change", ["disabled_at", "deleted_at"])
async def test_an_account_disabled_or_deleted_during_the_hash_gets_no_session_CHK_SE_05(
    changing: tuple[FastAPI, ChangeDuringHash], change: str
) -> None:
    """The password is right, but the account was disabled (or deleted) while argon2 ran: the
    answer is `invalid_credentials`, no session row appears, `last_login_at` is untouched."""
    app, hasher = changing
    async with client_for(app) as client:
        email, password, _token = await new_user(client)
        client.cookies.clear()
        before = await user_row(app, email)
        sessions_before = await _user_sessions(app, email)

        async def flip() -> None:
            async with database(app).session_scope() as db:
                await db.execute(update(User).where(User.email == email).values({change: utcnow()}))

        hasher.during = flip
        response = await sign_in(client, email, password)
        assert (response.status_code, response.json()["error"]) == (401, "invalid_credentials")
        assert "set-cookie" not in response.headers
        assert hasher.during is None  # the change ran during this sign-in's hash
        after = await user_row(app, email)
        assert after.last_login_at == before.last_login_at
        assert await _user_sessions(app, email) == sessions_before
        attempt = (await audit_rows(app, "auth.sign_in"))[-1]
        assert (attempt.outcome, attempt.target) == ("failure", None)


async def test_a_sign_in_records_the_login_and_settles_its_one_audit_row_CHK_BF_05_CHK_LG_01(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """Two wrong passwords count 2; the right one answers with the stored session and user,
    clears the count, sets `last_login_at`, and turns its own audit row into a success that
    names the session — one row per attempt, every field present."""
    email, password, _token = await new_user(client)
    client.cookies.clear()
    for _ in range(2):
        assert (await sign_in(client, email, strong_password())).status_code == 401
    assert (await user_row(app, email)).failed_login_count == 2
    rows_before = len(await audit_rows(app, "auth.sign_in"))
    started = utcnow()

    response = await sign_in(client, email, password)
    assert response.status_code == 200
    body = response.json()
    user = await user_row(app, email)
    assert user.failed_login_count == 0
    assert user.last_login_at is not None
    assert user.last_login_at >= started
    assert body["user"]["id"] == str(user.id)
    assert body["user"]["email"] == email
    async with database(app).session_scope() as db:
        session_id = uuid.UUID(body["session"]["id"])
        stored = await db.scalar(select(Session).where(Session.id == session_id))
        assert stored is not None
        assert stored.revoked_at is None
        assert datetime.fromisoformat(body["session"]["expires_at"]) == stored.expires_at
    rows = await audit_rows(app, "auth.sign_in")
    assert len(rows) == rows_before + 1
    attempt = rows[-1]
    assert (attempt.outcome, attempt.target) == ("success", body["session"]["id"])
    assert attempt.detail == {"method": "password"}
    assert (attempt.actor_id, attempt.actor, attempt.ip) == (user.id, email, "127.0.0.1")
    assert attempt.request_id
    assert attempt.user_agent


async def test_session_checks_answer_while_a_write_transaction_is_open_FI_DB_12(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """A session check only reads (its renewal write is due at most once per interval), so an
    open write transaction — on SQLite the database's one write lock — does not hold it up."""
    email, _password, token = await new_user(client)
    client.cookies.clear()
    async with database(app).session_scope() as db:
        await db.execute(update(User).where(User.email == email).values(name="writer"))
        checks = await asyncio.gather(
            *(client.get("/api/auth/session", headers=bearer(token)) for _ in range(5))
        )
        assert [r.status_code for r in checks] == [200] * 5
        assert {r.json()["user"]["email"] for r in checks} == {email}
    async with database(app).session_scope() as db:
        named = await db.scalar(select(func.count()).select_from(User).where(User.name == "writer"))
    assert named == 1
