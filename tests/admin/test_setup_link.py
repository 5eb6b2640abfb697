"""The first-run setup link: printed once to stderr and never logged, single use (FI-RACE-01),
expiring, revoked by the next start, refused once an admin exists, never the admin's password
(CHK-PW-07), absent in production, and the whole flow through a real `authkeep serve`."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import time_machine
from admin_helpers import make_admin, new_email, sign_in, strong_password
from fastapi import FastAPI
from sqlalchemy import func, select, update

from authkeep.core.db import Database
from authkeep.core.dsn import candidates
from authkeep.users import admin_routes, one_time
from authkeep.users.models import OneTimeToken, User
from authkeep.users.setup_link import announce_setup_link, issue_setup_token
from support.secrets_scan import FIGURES
from support.server import ServerProcess
from users.identity_helpers import SAME_ORIGIN, audit_rows, cheap_hashing, database, sign_up

LINK = re.compile(
    r"^First run: create the admin at (?P<url>http://\S+/admin/setup)#token=(?P<token>[\w-]+) "
    r"\(valid (?P<minutes>\d+) minutes, works once\)$"
)
START = datetime(2031, 7, 1, 8, 0, tzinfo=UTC)
RACERS = 16
RACE_TRIALS = 50


def links(text: str) -> list[re.Match[str]]:
    return [m for line in text.splitlines() if (m := LINK.match(line.strip()))]


async def fresh_token(app: FastAPI) -> str:
    async with database(app).session_scope() as db:
        token = await issue_setup_token(db, app.state.settings)
    assert token is not None
    return token


async def post_setup(
    client: httpx.AsyncClient, token: str, email: str | None = None, password: str | None = None
) -> httpx.Response:
    body = {
        "token": token,
        "email": email or new_email("owner"),
        "password": password or strong_password(),
    }
    return await client.post("/api/admin/setup", json=body)


async def test_start_prints_one_marked_line_and_no_log_record_holds_the_token(
    app: FastAPI, client: httpx.AsyncClient, capsys: pytest.CaptureFixture[str], caplog
):
    capsys.readouterr()
    with caplog.at_level(logging.DEBUG):
        await announce_setup_link(app)
        (link,) = links(capsys.readouterr().err)
        token = link["token"]
        assert link["url"] == "http://127.0.0.1:8080/admin/setup"
        assert link["minutes"] == "60"
        email, password = new_email("owner"), strong_password()
        created = await post_setup(client, token, email, password)
        assert created.status_code == 201, created.text
        await announce_setup_link(app)
        assert links(capsys.readouterr().err) == [], "an admin exists: no link"
    assert caplog.records, "the flow logged (the audit line, at least)"
    assert not [r for r in caplog.records if token in r.getMessage()]
    assert created.json()["user"] | {"id": None, "created_at": None} == {
        "id": None,
        "created_at": None,
        "email": email,
        "name": None,
        "role": "admin",
        "email_verified": True,
    }
    assert "token" not in created.json()
    assert "set-cookie" not in created.headers, "setup does not sign in"
    signed_in = await sign_in(client, email, password)
    assert (signed_in.status_code, signed_in.json()["user"]["role"]) == (200, "admin")
    reused = await post_setup(client, token)
    assert (reused.status_code, reused.json()["error"]) == (400, "invalid_token")


async def test_each_start_revokes_the_older_links(app: FastAPI, client: httpx.AsyncClient):
    older = await fresh_token(app)
    newer = await fresh_token(app)
    stale = await post_setup(client, older)
    assert (stale.status_code, stale.json()["error"]) == (400, "invalid_token")
    assert (await post_setup(client, newer)).status_code == 201
    events = await audit_rows(app, "admin.setup")
    assert [(e.outcome, (e.detail or {}).get("reason")) for e in events] == [
        ("failure", "invalid_token"),
        ("success", None),
    ]
    assert events[1].target == str(events[1].actor_id)


async def test_the_link_expires_after_setup_link_minutes(app: FastAPI, client: httpx.AsyncClient):
    taken = new_email("taken")
    assert (await sign_up(client, taken, strong_password())).status_code == 202
    with time_machine.travel(START, tick=False) as traveller:
        token = await fresh_token(app)
        traveller.shift(timedelta(minutes=59, seconds=59))
        # Still valid: it gets past the token check and fails only on the taken email.
        late = await post_setup(client, token, taken)
        assert (late.status_code, late.json()["error"]) == (409, "email_taken")
        traveller.shift(timedelta(seconds=2))
        expired = await post_setup(client, token)
        assert (expired.status_code, expired.json()["error"]) == (400, "invalid_token")


async def test_refused_attempts_leave_the_token_usable_and_it_is_never_a_password_CHK_PW_07(
    app: FastAPI, client: httpx.AsyncClient
):
    token = await fresh_token(app)
    as_password = await post_setup(client, token, password=token)
    assert (as_password.status_code, as_password.json()["error"]) == (422, "password_context")
    padded = await post_setup(client, token, password=f"{token}!!")
    assert (padded.status_code, padded.json()["error"]) == (422, "password_context")
    weak = await post_setup(client, token, password="Password1234567!")
    assert (weak.status_code, weak.json()["error"]) == (422, "password_common")
    taken = new_email("taken")
    await sign_up(client, taken, strong_password())
    clash = await post_setup(client, token, taken)
    assert (clash.status_code, clash.json()["error"]) == (409, "email_taken")
    cross_site = await client.post(
        "/api/admin/setup",
        json={"token": token, "email": new_email(), "password": strong_password()},
        headers={"Sec-Fetch-Site": "cross-site"},
    )
    assert (cross_site.status_code, cross_site.json()["error"]) == (403, "csrf_rejected")
    good = await client.post(
        "/api/admin/setup",
        json={"token": token, "email": new_email("owner"), "password": strong_password()},
        headers=SAME_ORIGIN,
    )
    assert good.status_code == 201


async def test_a_valid_token_is_refused_once_an_admin_exists(
    app: FastAPI, client: httpx.AsyncClient
):
    await make_admin(app)
    async with database(app).session_scope() as db:
        assert await issue_setup_token(db, app.state.settings) is None
        token = await one_time.issue(db, one_time.ADMIN_SETUP, timedelta(minutes=5))
    refused = await post_setup(client, token)
    assert (refused.status_code, refused.json()["error"]) == (409, "admin_exists")
    async with database(app).session_scope() as db:
        admins = await db.scalar(select(func.count()).where(User.role == "admin"))
    assert admins == 1


async def test_setup_token_single_use_under_16_concurrent_attempts_FI_RACE_01(
    app: FastAPI, client: httpx.AsyncClient, migrated_url: str
):
    app.state.passwords.close()
    app.state.passwords = cheap_hashing()
    successes: Counter[int] = Counter()
    refusals: Counter[str] = Counter()
    for trial in range(RACE_TRIALS):
        token = await fresh_token(app)
        emails = [new_email(f"race{trial}-{i}") for i in range(RACERS)]
        responses = await asyncio.gather(*(post_setup(client, token, e) for e in emails))
        won = [r for r in responses if r.status_code == 201]
        successes[len(won)] += 1
        # A loser that read the token before the winner committed and the admins after it
        # hears 409 admin_exists; every other loser hears 400 invalid_token. Both are true.
        lost = Counter(
            f"{r.status_code} {r.json()['error']}" for r in responses if r.status_code != 201
        )
        refusals.update(lost)
        assert len(won) == 1, [r.text for r in responses]
        assert set(lost) <= {"400 invalid_token", "409 admin_exists"}, lost
        async with database(app).session_scope() as db:
            assert await db.scalar(select(func.count()).where(User.role == "admin")) == 1
            # Demote the winner, so the next trial starts with no admin again.
            await db.execute(update(User).where(User.role == "admin").values(role="user"))
    engine = "sqlite" if migrated_url.startswith("sqlite") else "postgresql"
    FIGURES.append(
        f"FI-RACE-01 setup token ({engine}): {RACE_TRIALS} trials x {RACERS} concurrent "
        f"attempts, exactly one success in {successes[1]}/{RACE_TRIALS} trials; "
        f"refusals {dict(refusals)}"
    )


async def test_the_setup_page_has_a_strict_nonce_csp_and_nothing_external(
    client: httpx.AsyncClient,
):
    first = await client.get("/admin/setup")
    second = await client.get("/admin/setup")
    assert first.status_code == 200
    assert first.headers["content-type"].startswith("text/html")
    policy = first.headers["content-security-policy"]
    nonce = re.search(r"script-src 'nonce-([\w-]+)'", policy)
    assert nonce is not None
    assert policy.startswith("default-src 'none';")
    assert "unsafe-inline" not in policy
    assert "form-action 'none'" in policy
    assert policy != second.headers["content-security-policy"], "a new nonce per response"
    html = first.text
    assert html.count(f'nonce="{nonce[1]}"') == 2  # the one style and the one script
    assert re.findall(r"<script|<style", html) == ["<style", "<script"]
    assert not re.search(r"\b(src|href)\s*=", html), "no external resources"
    assert "location.hash" in html
    assert "history.replaceState" in html
    assert first.headers["referrer-policy"] == "no-referrer"
    assert first.headers["cache-control"] == "no-store"


async def test_production_prints_no_link_and_serves_no_setup_routes(
    migrated_url: str, make_settings, capsys: pytest.CaptureFixture[str]
):
    settings = make_settings(env="production", database_url=migrated_url)
    application = FastAPI()
    admin_routes.install(application, settings)
    paths = set(application.openapi()["paths"])
    assert "/api/admin/users" in paths
    assert "/api/admin/setup" not in paths
    application.state.settings = settings
    application.state.database = Database.open(candidates(settings)[0], settings)
    try:
        await announce_setup_link(application)
        async with application.state.database.session_scope() as db:
            tokens = await db.scalar(select(func.count()).select_from(OneTimeToken))
    finally:
        await application.state.database.dispose()
    assert tokens == 0
    assert "First run" not in capsys.readouterr().err


def test_first_run_through_a_real_server_then_sign_in(tmp_path: Path):
    """The operator's path: start, copy the link from the console, open it, sign in."""
    with ServerProcess(tmp_path, {}) as server:
        output = server.output()
        (link,) = links(output)
        assert link["url"] == f"{server.url}/admin/setup"
        token = link["token"]
        page = httpx.get(link["url"])
        assert page.status_code == 200
        assert "Create the admin" in page.text
        email, password = new_email("owner"), strong_password()
        body = {"token": token, "email": email, "password": password}
        created = httpx.post(f"{server.url}/api/admin/setup", json=body)
        assert created.status_code == 201, created.text
        again = httpx.post(f"{server.url}/api/admin/setup", json=body)
        assert (again.status_code, again.json()["error"]) == (400, "invalid_token")
        signed_in = httpx.post(
            f"{server.url}/api/auth/sign-in", json={"email": email, "password": password}
        )
        assert (signed_in.status_code, signed_in.json()["user"]["role"]) == (200, "admin")
    full = server.output()
    assert full.count(token) == 1, "the token is only in the one marked line"
    assert "POST /api/admin/setup" in full, "the access log saw the requests, not the token"
    with ServerProcess(tmp_path, {}) as restarted:
        assert links(restarted.output()) == [], "an admin exists: no link on the next start"


def test_several_workers_print_no_link_but_say_what_to_do(tmp_path: Path):
    """Each worker would revoke the link the previous one printed, so none prints one."""
    with ServerProcess(tmp_path, {}, "--workers", "2") as server:
        deadline = time.monotonic() + 20
        while server.output().count("No admin exists yet") < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        output = server.output()
    assert links(output) == []
    assert output.count("No admin exists yet") == 2
    assert "authkeep users create-admin" in output
