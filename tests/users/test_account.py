"""Signed-in account actions: change password (CHK-PW-05, CHK-PW-09), delete account
(tombstoned email, CHK-SE-05), the fresh-session rule (CHK-SE-06), and the design rule that
no database connection is held while argon2 runs (FI-DOS-01)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httpx
import pytest
import time_machine
from fastapi import FastAPI
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
    strong_password,
    user_row,
)

from authkeep.app import create_app
from authkeep.core.models import utcnow
from authkeep.core.security import PasswordHashing
from authkeep.mfa.models import MfaFactor
from authkeep.sessions.models import Session
from authkeep.users import one_time
from authkeep.users.models import User
from support.secrets_scan import SCAN

T = TypeVar("T")
START = datetime(2031, 5, 6, 12, 0, tzinfo=UTC)


async def change(client: httpx.AsyncClient, token: str, current: str, new: str) -> httpx.Response:
    return await client.post(
        "/api/auth/password/change",
        json={"current_password": current, "new_password": new},
        headers=bearer(token),
    )


async def test_change_password_keeps_this_session_and_ends_the_others_CHK_PW_09(
    app: FastAPI, client: httpx.AsyncClient
):
    email, password, token = await new_user(client)
    client.cookies.clear()
    other = (await sign_in(client, email, password)).json()["token"]
    client.cookies.clear()
    async with database(app).session_scope() as db:
        user = await db.get(User, (await user_row(app, email)).id)
        assert user is not None
        reset_link = SCAN.register(
            await one_time.issue(db, one_time.RESET_PASSWORD, timedelta(hours=1), user.id)
        )
    new_password = strong_password()
    response = await change(client, token, password, new_password)
    assert response.status_code == 200
    assert response.json() == {"status": "changed", "sessions_revoked": 1}
    assert (await client.get("/api/auth/session", headers=bearer(other))).status_code == 401
    assert (await client.get("/api/auth/session", headers=bearer(token))).status_code == 200
    assert (await sign_in(client, email, password)).status_code == 401
    assert (await sign_in(client, email, new_password)).status_code == 200
    async with database(app).session_scope() as db:
        assert await one_time.consume(db, reset_link, one_time.RESET_PASSWORD) is None
    events = await audit_rows(app, "auth.password_change")
    assert [(e.outcome, e.detail) for e in events] == [("success", {"sessions_ended": 1})]


async def test_wrong_current_password_is_refused_and_counted_CHK_PW_05(
    app: FastAPI, client: httpx.AsyncClient
):
    email, _password, token = await new_user(client)
    client.cookies.clear()
    limit = app.state.settings.login_ip_failures_per_minute
    for attempt in range(limit):
        response = await change(client, token, "not my password", strong_password())
        assert (response.status_code, response.json()["error"]) == (
            403,
            "invalid_current_password",
        )
        assert (await user_row(app, email)).failed_login_count == attempt + 1
    throttled = await change(client, token, "not my password", strong_password())
    assert throttled.status_code == 429
    outcomes = [e.outcome for e in await audit_rows(app, "auth.password_change")]
    assert outcomes == ["failure"] * limit + ["throttled"]


async def test_new_password_must_pass_the_policy(app: FastAPI, client: httpx.AsyncClient):
    email, password, token = await new_user(client, email="marigold.fields@example.com")
    client.cookies.clear()
    for new, reason in [
        ("short", "password_too_short"),
        ("MarigoldFields!!2024", "password_context"),
        ("Password1234567890", "password_common"),
    ]:
        response = await change(client, token, password, new)
        assert (response.status_code, response.json()["error"]) == (422, reason)
    assert (await user_row(app, email)).failed_login_count == 0


async def test_users_with_mfa_may_choose_the_shorter_minimum_CHK_PW_01(
    app: FastAPI, client: httpx.AsyncClient
):
    email, password, token = await new_user(client)
    client.cookies.clear()
    short = SCAN.register("tulip#gravel")
    assert (await change(client, token, password, short)).json()["error"] == "password_too_short"
    async with database(app).session_scope() as db:
        user = await user_row(app, email)
        db.add(MfaFactor(user_id=user.id, secret_encrypted="x", confirmed_at=utcnow()))
    assert (await change(client, token, password, short)).status_code == 200


async def test_delete_account_tombstones_the_email_and_ends_every_session(
    app: FastAPI, client: httpx.AsyncClient
):
    email, password, token = await new_user(client)
    client.cookies.clear()
    other = (await sign_in(client, email, password)).json()["token"]
    client.cookies.clear()
    old_id = (await user_row(app, email)).id

    wrong = await client.post(
        "/api/auth/account/delete", json={"password": "nope nope"}, headers=bearer(token)
    )
    assert (wrong.status_code, wrong.json()["error"]) == (403, "invalid_current_password")
    deleted = await client.post(
        "/api/auth/account/delete", json={"password": password}, headers=bearer(token)
    )
    assert deleted.status_code == 204
    assert deleted.headers["Clear-Site-Data"] == '"cookies"'
    for t in (token, other):
        assert (await client.get("/api/auth/session", headers=bearer(t))).status_code == 401
    assert (await sign_in(client, email, password)).status_code == 401

    async with database(app).session_scope() as db:
        row = await db.get(User, old_id)
        assert row is not None
        assert row.deleted_at is not None
        assert row.email != email
        assert row.email.endswith("@deleted.invalid")
        assert row.password_hash is None
    assert (
        await count_rows(app, Session, Session.user_id == old_id, Session.revoked_at.is_(None)) == 0
    )

    again = strong_password()
    assert (await sign_up(client, email.upper(), again)).status_code == 202
    fresh = await sign_in(client, email, again)
    assert fresh.status_code == 200
    assert fresh.json()["user"]["id"] != str(old_id)
    outcomes = [e.outcome for e in await audit_rows(app, "auth.account_delete")]
    assert outcomes == ["failure", "success"]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/api/auth/password/change", {"current_password": "x", "new_password": "y"}),
        ("POST", "/api/auth/account/delete", {"password": "x"}),
        ("DELETE", "/api/auth/sessions", None),
        ("DELETE", "/api/auth/sessions/{other}", None),
    ],
)
async def test_stale_sessions_must_sign_in_again_for_sensitive_actions_CHK_SE_06(
    app: FastAPI, client: httpx.AsyncClient, method: str, path: str, body: Any
):
    window = timedelta(minutes=app.state.settings.session_fresh_minutes)
    with time_machine.travel(START, tick=False) as traveller:
        email, password, token = await new_user(client)
        client.cookies.clear()
        other = (await sign_in(client, email, password)).json()["session"]["id"]
        client.cookies.clear()
        traveller.shift(window + timedelta(seconds=1))
        response = await client.request(
            method, path.format(other=other), json=body, headers=bearer(token)
        )
        assert (response.status_code, response.json()["error"]) == (403, "reauth_required")
        # Still a valid session for everything else, including ending itself.
        assert (await client.get("/api/auth/sessions", headers=bearer(token))).status_code == 200
        assert (await user_row(app, email)).failed_login_count == 0


class ConnectionProbe(PasswordHashing):
    """The real hasher, also noting how many pooled connections are checked out whenever an
    argon2 job starts."""

    checked_out: list[int]
    pool: Any

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        self.checked_out.append(self.pool.checkedout())
        return await super()._run(fn, *args)


@pytest.fixture
async def probed(migrated_url: str, make_settings) -> AsyncIterator[tuple[FastAPI, Any]]:
    app = create_app(make_settings(database_url=migrated_url))
    # Background services (usage flusher, webhook deliverer) use connections of their own at
    # moments of their own; the probe is about the requests' connections, so none run here.
    app.state.services = []
    async with app.router.lifespan_context(app):
        app.state.passwords.close()
        probe = ConnectionProbe(workers=2)
        probe.checked_out = []
        probe.pool = database(app).engine.pool
        app.state.passwords = probe
        yield app, probe


async def test_no_connection_is_held_while_hashing_FI_DOS_01(probed: tuple[FastAPI, Any]):
    app, probe = probed
    async with client_for(app) as client:
        email, password, token = await new_user(client)
        client.cookies.clear()
        await sign_in(client, email, strong_password())
        await sign_in(client, new_email(), password)
        new_password = strong_password()
        assert (await change(client, token, password, new_password)).status_code == 200
        deleted = await client.post(
            "/api/auth/account/delete", json={"password": new_password}, headers=bearer(token)
        )
        assert deleted.status_code == 204
    assert len(probe.checked_out) >= 7
    assert set(probe.checked_out) == {0}
