"""Sessions through `/api/auth` (CHK-SE-01..04, 07, 08, CHK-CK-01/02, FI-RACE-06): opaque
tokens stored as digests, rotation at sign-in, timeouts, sign-out, listing and revoking, the
per-user cap, cookie attributes, the same-site half of the CSRF rule for cookie requests, and
renewal writes."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import time_machine
from fastapi import FastAPI
from identity_helpers import (
    SAME_ORIGIN,
    audit_rows,
    bearer,
    client_for,
    database,
    new_email,
    new_user,
    same_origin_csrf,
    sign_in,
    sign_up,
    started_app,
    strong_password,
)
from sqlalchemy import event, select

from authkeep.sessions.models import Session
from support.secrets_scan import FIGURES, SCAN

START = datetime(2031, 3, 4, 9, 0, tzinfo=UTC)


def parse_set_cookie(header: str) -> tuple[str, str, dict[str, str]]:
    first, *attributes = [part.strip() for part in header.split(";")]
    name, _, value = first.partition("=")
    attrs = {}
    for attribute in attributes:
        key, _, val = attribute.partition("=")
        attrs[key.lower()] = val
    return name, value, attrs


async def test_tokens_are_random_and_only_their_digest_is_stored_CHK_SE_01(
    app: FastAPI, client: httpx.AsyncClient
):
    tokens = [(await new_user(client))[2] for _ in range(3)]
    async with database(app).session_scope() as db:
        rows = (await db.scalars(select(Session))).all()
    stored = {row.token_hash for row in rows}
    for token in tokens:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        assert len(raw) >= 16
        assert hashlib.sha256(token.encode()).hexdigest() in stored
        for row in rows:
            assert token not in repr(row.__dict__)


async def test_sign_in_rotates_and_revokes_a_presented_cookie_CHK_SE_02(
    app: FastAPI, client: httpx.AsyncClient
):
    email, password, first = await new_user(client)
    assert client.cookies.get("authkeep_session") == first
    second = (await sign_in(client, email, password)).json()["token"]  # carries `first`
    assert second != first
    client.cookies.clear()
    assert (await client.get("/api/auth/session", headers=bearer(first))).status_code == 401
    assert (await client.get("/api/auth/session", headers=bearer(second))).status_code == 200


async def test_an_attacker_chosen_cookie_is_never_adopted_CHK_SE_02(
    app: FastAPI, client: httpx.AsyncClient
):
    email, password = new_email(), strong_password()
    await sign_up(client, email, password)
    planted = SCAN.register("attacker-chosen-session-value-0123456789")
    client.cookies.set("authkeep_session", planted)
    response = await sign_in(client, email, password)
    name, value, _attrs = parse_set_cookie(response.headers["set-cookie"])
    assert name == "authkeep_session"
    assert value not in {planted, ""}
    client.cookies.clear()
    assert (await client.get("/api/auth/session", headers=bearer(planted))).status_code == 401


async def test_idle_and_absolute_timeouts_CHK_SE_03(app: FastAPI, client: httpx.AsyncClient):
    settings = app.state.settings
    idle = timedelta(minutes=settings.session_idle_minutes)
    absolute = timedelta(hours=settings.session_absolute_hours)
    second = timedelta(seconds=1)
    with time_machine.travel(START, tick=False) as traveller:
        email, password, token = await new_user(client)
        client.cookies.clear()

        async def status(t: str) -> int:
            return (await client.get("/api/auth/session", headers=bearer(t))).status_code

        traveller.shift(idle - second)
        assert await status(token) == 200  # and this renews last_seen
        traveller.shift(idle - second)
        assert await status(token) == 200
        traveller.shift(idle + second)
        assert await status(token) == 401

        traveller.move_to(START + timedelta(days=1))
        fresh = (await sign_in(client, email, password)).json()["token"]
        client.cookies.clear()
        elapsed = timedelta(0)
        step = timedelta(minutes=20)
        while elapsed + step < absolute:
            traveller.shift(step)
            elapsed += step
            assert await status(fresh) == 200, elapsed
        traveller.shift(absolute - elapsed - second)
        assert await status(fresh) == 200
        traveller.shift(2 * second)
        assert await status(fresh) == 401


async def test_sign_out_ends_the_session_and_clears_the_cookie_CHK_SE_04(
    app: FastAPI, client: httpx.AsyncClient
):
    email, password, token = await new_user(client)
    client.cookies.clear()
    response = await client.post("/api/auth/sign-out", headers=bearer(token))
    assert response.status_code == 204
    assert response.headers["Clear-Site-Data"] == '"cookies"'
    name, value, attrs = parse_set_cookie(response.headers["set-cookie"])
    assert name == "authkeep_session"
    assert value in {"", '""'}
    assert attrs.get("max-age") == "0" or "1970" in attrs.get("expires", "")
    assert (await client.get("/api/auth/session", headers=bearer(token))).status_code == 401
    assert (await client.post("/api/auth/sign-out", headers=bearer(token))).status_code == 401

    # Cookie flavour: the replayed cookie fails after sign-out.
    cookie = (await sign_in(client, email, password)).json()["token"]
    page = await same_origin_csrf(client)
    assert (await client.post("/api/auth/sign-out", headers=page)).status_code == 204
    client.cookies.set("authkeep_session", cookie)
    assert (await client.get("/api/auth/session")).status_code == 401
    assert [e.outcome for e in await audit_rows(app, "auth.sign_out")] == ["success", "success"]


async def test_list_and_revoke_own_sessions_CHK_SE_07(app: FastAPI, client: httpx.AsyncClient):
    email, password, first = await new_user(client)
    client.cookies.clear()
    second = (await sign_in(client, email, password)).json()["token"]
    client.cookies.clear()
    listed = (await client.get("/api/auth/sessions", headers=bearer(first))).json()
    assert len(listed) == 2
    assert [s["current"] for s in listed] == [False, True]  # newest first
    other_id = listed[0]["id"]

    _other_email, _pw, stranger = await new_user(client)
    client.cookies.clear()
    foreign = await client.delete(f"/api/auth/sessions/{other_id}", headers=bearer(stranger))
    assert foreign.status_code == 404  # CHK-AC-02: not yours
    missing = await client.delete(f"/api/auth/sessions/{uuid.uuid4()}", headers=bearer(first))
    assert missing.status_code == 404

    revoked = await client.delete(f"/api/auth/sessions/{other_id}", headers=bearer(first))
    assert revoked.status_code == 204
    assert (await client.get("/api/auth/session", headers=bearer(second))).status_code == 401
    assert (await client.get("/api/auth/session", headers=bearer(first))).status_code == 200
    events = await audit_rows(app, "auth.session_revoke")
    assert [e.target for e in events] == [other_id]


async def test_revoke_all_other_sessions(app: FastAPI, client: httpx.AsyncClient):
    email, password, keep = await new_user(client)
    others = []
    for _ in range(3):
        client.cookies.clear()
        others.append((await sign_in(client, email, password)).json()["token"])
    client.cookies.clear()
    response = await client.delete("/api/auth/sessions", headers=bearer(keep))
    assert response.json() == {"revoked": 3}
    for token in others:
        assert (await client.get("/api/auth/session", headers=bearer(token))).status_code == 401
    assert (await client.get("/api/auth/session", headers=bearer(keep))).status_code == 200


async def test_the_oldest_session_is_evicted_past_the_cap_CHK_SE_08(
    migrated_url: str, make_settings
):
    async with (
        started_app(make_settings, migrated_url, max_sessions_per_user=3) as app,
        client_for(app) as client,
    ):
        email, password, oldest = await new_user(client)
        tokens = [oldest]
        for _ in range(3):
            client.cookies.clear()
            tokens.append((await sign_in(client, email, password)).json()["token"])
        client.cookies.clear()
        statuses = [
            (await client.get("/api/auth/session", headers=bearer(t))).status_code for t in tokens
        ]
        assert statuses == [401, 200, 200, 200]
        listed = await client.get("/api/auth/sessions", headers=bearer(tokens[-1]))
        assert len(listed.json()) == 3


@pytest.mark.parametrize(
    ("base_url", "name", "secure"),
    [
        ("http://testserver", "authkeep_session", False),
        ("https://testserver", "__Host-authkeep_session", True),
    ],
)
async def test_cookie_attributes_CHK_CK_01(app: FastAPI, base_url: str, name: str, secure: bool):
    async with client_for(app, base_url=base_url) as client:
        email, password = new_email(), strong_password()
        await sign_up(client, email, password)
        response = await sign_in(client, email, password)
        cookie_name, value, attrs = parse_set_cookie(response.headers["set-cookie"])
        assert cookie_name == name
        assert value == response.json()["token"]
        assert "httponly" in attrs
        assert attrs["samesite"].lower() == "lax"
        assert attrs["path"] == "/"
        assert "domain" not in attrs
        assert ("secure" in attrs) is secure
        # The cookie alone authenticates a safe request.
        assert (await client.get("/api/auth/session")).status_code == 200
        csrf = {"X-CSRF-Token": response.json()["csrf_token"]}
        out = await client.post("/api/auth/sign-out", headers={**SAME_ORIGIN, **csrf})
        _n, _v, cleared = parse_set_cookie(out.headers["set-cookie"])
        assert _n == name
        assert ("secure" in cleared) is secure


async def test_cookie_requests_that_change_state_need_same_site_CHK_CK_02(
    app: FastAPI, client: httpx.AsyncClient
):
    """The same-site half of the rule, even with the right CSRF token (the token half and the
    whole matrix: tests/users/test_csrf_token.py)."""
    _email, _password, token = await new_user(client)  # the jar now holds the cookie
    csrf = {"X-CSRF-Token": (await same_origin_csrf(client))["X-CSRF-Token"]}
    for headers in (
        {"Sec-Fetch-Site": "cross-site"},
        {"Origin": "https://evil.example"},
        {},  # a cookie with neither header is not from a browser page of ours
    ):
        refused = await client.post("/api/auth/sign-out", headers={**headers, **csrf})
        assert (refused.status_code, refused.json()["error"]) == (403, "csrf_rejected")
        listed_id = (await client.get("/api/auth/sessions")).json()[0]["id"]
        refused = await client.delete(
            f"/api/auth/sessions/{listed_id}", headers={**headers, **csrf}
        )
        assert refused.status_code == 403
    # Bearer requests are not cookie requests: unaffected by the CSRF rule.
    cross = {"Sec-Fetch-Site": "cross-site", **bearer(token)}
    assert (await client.get("/api/auth/sessions", headers=cross)).status_code == 200
    same = await client.post("/api/auth/sign-out", headers={"Origin": "http://testserver", **csrf})
    assert same.status_code == 204


@pytest.fixture
def statement_log(app: FastAPI) -> Iterator[list[tuple[str, int]]]:
    """(statement, rows affected) for every UPDATE of sessions.last_seen_at."""
    log: list[tuple[str, int]] = []
    engine = database(app).engine.sync_engine

    def after(conn: Any, cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE SESSIONS SET LAST_SEEN_AT"):
            log.append((statement, cursor.rowcount))

    event.listen(engine, "after_cursor_execute", after)
    yield log
    event.remove(engine, "after_cursor_execute", after)


async def test_concurrent_requests_renew_a_session_at_most_once_FI_RACE_06(
    app: FastAPI, client: httpx.AsyncClient, statement_log: list[tuple[str, int]]
):
    """50 concurrent requests on one session: no renewal write inside the interval, and at
    most one row-changing write once the interval has passed."""
    interval = timedelta(seconds=app.state.settings.session_renew_seconds)
    with time_machine.travel(START, tick=False) as traveller:
        _email, _password, token = await new_user(client)
        client.cookies.clear()

        async def burst() -> None:
            responses = await asyncio.gather(
                *(client.get("/api/auth/session", headers=bearer(token)) for _ in range(50))
            )
            assert {r.status_code for r in responses} == {200}

        await burst()
        assert sum(rows for _s, rows in statement_log) == 0
        traveller.shift(interval + timedelta(seconds=1))
        await burst()
        changed = sum(rows for _s, rows in statement_log)
        assert changed == 1
        await burst()
        assert sum(rows for _s, rows in statement_log) == 1
    FIGURES.append(
        f"FI-RACE-06-lite: 3 bursts x 50 concurrent requests on one session -> {changed} "
        f"renewal write ({len(statement_log)} UPDATE statements issued)"
    )
