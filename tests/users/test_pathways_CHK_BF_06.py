"""CHK-BF-06 (ASVS5 6.3.4): every way in honours the account's lock and disable state.

A matrix on both engines: account states x pathways, each cell a test of its own. Each cell
makes a fresh account, obtains the pathway's credential while the account is active (a session,
an API key with a warm verify cache, an MFA challenge, a reset or verification link), puts the
account into the state, then tries the pathway once and asks: did it get in?

States:
- `active` — the control: every pathway must work, which proves each attempt below is a real
  attempt and not a typo that fails for any account.
- `disabled` — an admin disables the account (`POST /api/admin/users/{id}/disable`), which
  also ends its sessions and voids its links.
- `disabled_row` — only `users.disabled_at` is set (and the key cache told, as every committed
  change does); sessions, links and challenges are left alive. This proves each pathway checks
  the state itself instead of relying on the clean-up that the admin action does.
- `locked` — more than `login_max_failures` wrong passwords through `POST /api/auth/sign-in`.
- `deleted` — the user deletes the account (`POST /api/auth/account/delete`).

Expected: 0 successes in every cell of a blocked state, except the documented ones in
`LOCK_EXCEPTIONS` (the lock is a control against password guessing, see there) and
`setup_link`, which never gives access to an existing account in any state.

Pathways with no row here, because authkeep has none (guarded by the last two tests, which fail
as soon as one appears, so the matrix gets its row): no WebSocket endpoint (no relay yet), no
route that mints or accepts an ES256 token for a user (`tokens/` only publishes the JWKS), no
refresh token (a session renews itself on use: the `session_*` rows), no session minted from an
API key.
"""

from __future__ import annotations

import ast
import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import time_machine
from fastapi import FastAPI
from fastapi.routing import APIWebSocketRoute
from identity_helpers import (
    bearer,
    cheap_hashing,
    database,
    new_email,
    sign_in,
    sign_up,
    started_app,
    strong_password,
)
from sqlalchemy import select, update
from starlette.routing import WebSocketRoute

import authkeep
from admin.admin_helpers import signed_in_admin
from authkeep.app import create_app
from authkeep.core.models import utcnow
from authkeep.keys.cache import invalidations_for
from authkeep.users import admin, one_time, setup_link
from authkeep.users.models import User
from mfa.mfa_helpers import START, STEP, CodeWatch, confirm, enrol, sign_in_mfa, totp
from support.secrets_scan import FIGURES, SCAN

MAX_FAILURES = 3
STATES = ("active", "disabled", "disabled_row", "locked", "deleted")
BLOCKED = STATES[1:]
PATHWAYS = (
    "password_sign_in",
    "admin_sign_in",
    "mfa_second_step",
    "session_read",
    "session_write",
    "admin_session",
    "api_key_verify",
    "api_key_usage_report",
    "api_key_entitlements",
    "password_reset",
    "email_verification",
    "setup_link",
    "cli_create_admin_new_password",
    "cli_create_admin_keep_password",
)
# The lock (CHK-BF-01) stops password guessing: once an account's count of wrong passwords
# passes `login_max_failures`, no password opens it until a reset. Anyone who knows an address
# can trigger it, so it deliberately does not reach credentials that are not passwords:
# applying it there would let any stranger cut a user's sessions and integrations with 101
# wrong guesses (a lockout DoS), and guessing those credentials is not what it counts.
LOCK_EXCEPTIONS = {
    "session_read": "a session is not a password; the lock must not log its owner out",
    "session_write": "a session is not a password; the lock must not log its owner out",
    "admin_session": "a session is not a password; the lock must not log its owner out",
    "api_key_verify": "an API key is not a password; the lock must not cut integrations",
    "api_key_usage_report": "an API key is not a password; the lock must not cut integrations",
    "api_key_entitlements": "an API key is not a password; the lock must not cut integrations",
    "password_reset": "the reset is the documented way out of the lock (CHK-BF-03)",
    "email_verification": "proves the mailbox, gives no session; the account stays locked",
    "cli_create_admin_new_password": "the operator sets a new password: a reset (CHK-BF-03)",
}


def expected_success(state: str, pathway: str) -> bool:
    if pathway == "setup_link":
        return False  # creates a first admin; never a way into an existing account
    if state == "active":
        return True
    return state == "locked" and pathway in LOCK_EXCEPTIONS


# (engine, state, pathway) → got in; summarised as a figure when the module ends.
RESULTS: dict[tuple[str, str, str], bool] = {}


@pytest.fixture(scope="module", autouse=True)
def matrix_figure() -> Iterator[None]:
    yield
    for engine in sorted({engine for engine, _, _ in RESULTS}):
        cells = {(s, p): ok for (e, s, p), ok in RESULTS.items() if e == engine}
        refused = [c for c in cells if not expected_success(*c) and c[0] != "active"]
        excepted = [c for c in cells if c[0] == "locked" and expected_success(*c)]
        controls = [c for c in cells if c[0] == "active" and expected_success(*c)]
        FIGURES.append(
            f"CHK-BF-06 matrix ({engine}): {len(refused)} blocked cells, "
            f"{sum(cells[c] for c in refused)} successes; {len(excepted)} documented lock "
            f"exceptions, {sum(cells[c] for c in excepted)} got in as designed; "
            f"{sum(cells[c] for c in controls)}/{len(controls)} active controls got in"
        )


@pytest.fixture
async def app(migrated_url: str, make_settings) -> AsyncIterator[FastAPI]:
    """The app with a small lock threshold, no progressive delay (its own tests: CHK-BF-02),
    and test-only argon2 parameters: the cells are about who gets in, not about hashing."""
    async with started_app(
        make_settings, migrated_url, login_max_failures=MAX_FAILURES, login_delay_after=100
    ) as application:
        application.state.passwords.close()
        application.state.passwords = cheap_hashing()
        yield application


@dataclass
class Subject:
    """The account under test and the credentials it got while active."""

    email: str
    password: str
    user_id: uuid.UUID
    token: str
    key: str = ""
    secret: str = ""
    mfa_token: str = ""
    link: str = ""
    new_password: str = field(default_factory=lambda: strong_password("new-harbour-"))


@dataclass
class Cell:
    app: FastAPI
    client: httpx.AsyncClient
    url: str
    state: str
    pathway: str
    watch: CodeWatch


async def fresh_sign_in(client: httpx.AsyncClient, email: str, password: str) -> httpx.Response:
    """A sign-in with an empty cookie jar (a presented cookie would be ended by the sign-in),
    leaving the jar empty: every request here authenticates with a bearer header."""
    client.cookies.clear()
    response = await sign_in(client, email, password)
    client.cookies.clear()
    return response


async def make_subject(cell: Cell) -> Subject:
    email, password = new_email("subject"), strong_password()
    assert (await sign_up(cell.client, email, password)).status_code == 202
    response = await fresh_sign_in(cell.client, email, password)
    assert response.status_code == 200, response.text
    body = response.json()
    return Subject(email, password, uuid.UUID(body["user"]["id"]), body["token"])


async def create_key(cell: Cell, subject: Subject) -> httpx.Response:
    response = await cell.client.post(
        "/api/keys", json={"name": "pathways"}, headers=bearer(subject.token)
    )
    if response.status_code == 201:
        SCAN.register(response.json()["key"])
    else:
        SCAN.record("key create refusal", response.text)
    return response


async def verify_key(cell: Cell, key: str) -> dict[str, Any]:
    response = await cell.client.post("/api/keys/verify", json={}, headers={"X-API-Key": key})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def issue_link(cell: Cell, subject: Subject, purpose: str, minutes: int) -> str:
    """The single-use token a reset or verification mail carries, issued as the mail job
    issues it (`users.one_time`), while the account is active."""
    async with database(cell.app).session_scope() as db:
        token = await one_time.issue(
            db, purpose, timedelta(minutes=minutes), user_id=subject.user_id
        )
    return SCAN.register(token)


async def promote(cell: Cell, subject: Subject) -> None:
    """Make the subject an admin the way `authkeep users create-admin --keep-password` does."""
    settings = cell.app.state.settings
    await admin.ensure_admin(
        database(cell.app), cell.app.state.passwords, settings, subject.email, None
    )


# --- credentials obtained while the account is active ----------------------------------------


async def prepare(cell: Cell, subject: Subject) -> None:
    pathway = cell.pathway
    if pathway in ("admin_sign_in", "admin_session", "setup_link"):
        await promote(cell, subject)
    if pathway.startswith("api_key_"):
        response = await create_key(cell, subject)
        assert response.status_code == 201, response.text
        subject.key = response.json()["key"]
        warm = await verify_key(cell, subject.key)  # the verify cache now holds the key
        assert warm["valid"] is True, warm
    if pathway == "mfa_second_step":
        enrolled = await enrol(cell.client, subject.token)
        assert enrolled.status_code == 201, enrolled.text
        subject.secret = enrolled.json()["secret"]
        code = cell.watch.add(totp(subject.secret).now())
        assert (await confirm(cell.client, subject.token, code)).status_code == 200
        challenge = await fresh_sign_in(cell.client, subject.email, subject.password)
        assert challenge.json().get("mfa_required") is True, challenge.text
        subject.mfa_token = challenge.json()["mfa_token"]
    if pathway == "password_reset":
        subject.link = await issue_link(cell, subject, one_time.RESET_PASSWORD, 30)
    if pathway == "email_verification":
        subject.link = await issue_link(cell, subject, one_time.VERIFY_EMAIL, 60)


# --- the states --------------------------------------------------------------------------------


async def block(cell: Cell, subject: Subject) -> None:
    client, app = cell.client, cell.app
    if cell.state == "disabled":
        _, admin_password, admin_token = await signed_in_admin(app, client)
        response = await client.post(
            f"/api/admin/users/{subject.user_id}/disable", headers=bearer(admin_token)
        )
        assert response.status_code == 200, response.text
        if cell.pathway == "setup_link":
            # The other admin leaves too, so the disabled subject is the only admin left:
            # the one case in which a setup link can be had at all.
            gone = await client.post(
                "/api/auth/account/delete",
                json={"password": admin_password},
                headers=bearer(admin_token),
            )
            assert gone.status_code == 204, gone.text
    elif cell.state == "disabled_row":
        async with database(app).session_scope() as db:
            await db.execute(
                update(User).where(User.id == subject.user_id).values(disabled_at=utcnow())
            )
        await invalidations_for(app).user_changed(subject.user_id)
    elif cell.state == "locked":
        for _ in range(MAX_FAILURES + 1):
            wrong = await fresh_sign_in(client, subject.email, "wrong-" + subject.password)
            assert wrong.status_code == 401, wrong.text
        async with database(app).session_scope() as db:
            count = await db.scalar(
                select(User.failed_login_count).where(User.id == subject.user_id)
            )
        assert count is not None
        assert count > MAX_FAILURES
    elif cell.state == "deleted":
        response = await client.post(
            "/api/auth/account/delete",
            json={"password": subject.password},
            headers=bearer(subject.token),
        )
        assert response.status_code == 204, response.text


# --- the attempts: True when the pathway let the subject in --------------------------------


async def signs_in_as_subject(cell: Cell, subject: Subject, email: str, password: str) -> bool:
    response = await fresh_sign_in(cell.client, email, password)
    if response.status_code != 200:
        return False
    body = response.json()
    return "token" in body and body["user"]["id"] == str(subject.user_id)


async def run_cli(cell: Cell, *args: str, env: dict[str, str] | None = None) -> int:
    """`authkeep …` as an operator runs it: a process of its own on the app's database."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "authkeep",
        *args,
        env={**os.environ, "DATABASE_URL": cell.url, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    SCAN.record(f"cli:{' '.join(args)}", output.decode())
    assert process.returncode is not None
    return process.returncode


async def attempt_password_sign_in(cell: Cell, subject: Subject) -> bool:
    return await signs_in_as_subject(cell, subject, subject.email, subject.password)


async def attempt_mfa_second_step(cell: Cell, subject: Subject) -> bool:
    # The next step's code: the confirming code's step is spent (replay protection).
    code = cell.watch.add(totp(subject.secret).at(utcnow() + STEP))
    response = await sign_in_mfa(cell.client, subject.mfa_token, code)
    cell.client.cookies.clear()
    return response.status_code == 200


async def attempt_session_read(cell: Cell, subject: Subject) -> bool:
    response = await cell.client.get("/api/auth/session", headers=bearer(subject.token))
    return response.status_code == 200


async def attempt_session_write(cell: Cell, subject: Subject) -> bool:
    return (await create_key(cell, subject)).status_code == 201


async def attempt_admin_session(cell: Cell, subject: Subject) -> bool:
    response = await cell.client.get("/api/admin/users", headers=bearer(subject.token))
    return response.status_code == 200


async def attempt_api_key_verify(cell: Cell, subject: Subject) -> bool:
    return (await verify_key(cell, subject.key))["valid"] is True


async def attempt_api_key_usage_report(cell: Cell, subject: Subject) -> bool:
    response = await cell.client.post(
        "/api/usage/report", json={"count": 1}, headers={"X-API-Key": subject.key}
    )
    return response.status_code == 202


async def attempt_api_key_entitlements(cell: Cell, subject: Subject) -> bool:
    response = await cell.client.post(
        "/api/entitlements/check", json={"feature": "api"}, headers={"X-API-Key": subject.key}
    )
    return response.status_code == 200


async def attempt_password_reset(cell: Cell, subject: Subject) -> bool:
    """In if the reset went through, or if the new password then signs in."""
    response = await cell.client.post(
        "/api/auth/password/reset",
        json={"token": subject.link, "new_password": subject.new_password},
    )
    SCAN.record("reset answer", response.text)
    signed_in = await signs_in_as_subject(cell, subject, subject.email, subject.new_password)
    return response.status_code == 200 or signed_in


async def attempt_email_verification(cell: Cell, subject: Subject) -> bool:
    response = await cell.client.post(
        "/api/auth/verify-email/confirm", json={"token": subject.link}
    )
    SCAN.record("verify answer", response.text)
    if cell.state == "locked" and response.status_code == 200:
        # Not a way in: the account is as locked as before.
        assert not await signs_in_as_subject(cell, subject, subject.email, subject.password)
    return response.status_code == 200


async def attempt_setup_link(cell: Cell, subject: Subject) -> bool:
    """A setup link exists only while no admin can sign in; with it, try to take over the
    subject's address. In only if the subject's own account gets a session."""
    async with database(cell.app).session_scope() as db:
        token = await setup_link.issue_setup_token(db, cell.app.state.settings)
    if token is None:
        return False  # a usable admin exists: no link can be had
    SCAN.register(token)
    response = await cell.client.post(
        "/api/admin/setup",
        json={"token": token, "email": subject.email, "password": subject.new_password},
    )
    SCAN.record("setup answer", response.text)
    return await signs_in_as_subject(cell, subject, subject.email, subject.new_password)


async def attempt_cli_create_admin_new_password(cell: Cell, subject: Subject) -> bool:
    """`users create-admin` with a new password on the subject's address: the account may
    become an admin, but a disabled one stays disabled and a deleted one stays deleted (the
    address of a deleted account is free: a new account, with a new id, gets it)."""
    env = {"AUTHKEEP_ADMIN_PASSWORD": subject.new_password}
    await run_cli(cell, "users", "create-admin", "--email", subject.email, "--json", env=env)
    return await signs_in_as_subject(cell, subject, subject.email, subject.new_password)


async def attempt_cli_create_admin_keep_password(cell: Cell, subject: Subject) -> bool:
    args = ("users", "create-admin", "--email", subject.email, "--keep-password", "--json")
    await run_cli(cell, *args)
    return await signs_in_as_subject(cell, subject, subject.email, subject.password)


ATTEMPTS: dict[str, Callable[[Cell, Subject], Awaitable[bool]]] = {
    "password_sign_in": attempt_password_sign_in,
    "admin_sign_in": attempt_password_sign_in,
    "mfa_second_step": attempt_mfa_second_step,
    "session_read": attempt_session_read,
    "session_write": attempt_session_write,
    "admin_session": attempt_admin_session,
    "api_key_verify": attempt_api_key_verify,
    "api_key_usage_report": attempt_api_key_usage_report,
    "api_key_entitlements": attempt_api_key_entitlements,
    "password_reset": attempt_password_reset,
    "email_verification": attempt_email_verification,
    "setup_link": attempt_setup_link,
    "cli_create_admin_new_password": attempt_cli_create_admin_new_password,
    "cli_create_admin_keep_password": attempt_cli_create_admin_keep_password,
}


@pytest.mark.parametrize("pathway", PATHWAYS)
@pytest.mark.parametrize("state", STATES)
async def test_every_way_in_honours_the_account_state_CHK_BF_06(
    app: FastAPI, client: httpx.AsyncClient, migrated_url: str, state: str, pathway: str
) -> None:
    watch = CodeWatch()
    cell = Cell(app, client, migrated_url, state, pathway, watch)
    # TOTP codes depend on the clock: the MFA cells run on a frozen one, moved one step on.
    clock = time_machine.travel(START, tick=False) if pathway == "mfa_second_step" else None
    with clock or nullcontext() as traveller:
        subject = await make_subject(cell)
        await prepare(cell, subject)
        await block(cell, subject)
        if traveller is not None:
            traveller.shift(STEP)
        got_in = await ATTEMPTS[pathway](cell, subject)
    engine = "sqlite" if migrated_url.startswith("sqlite") else "postgresql"
    RESULTS[(engine, state, pathway)] = got_in
    assert watch.leaks() == []
    wanted = expected_success(state, pathway)
    why = LOCK_EXCEPTIONS.get(pathway, "") if state == "locked" else ""
    assert got_in is wanted, f"{state} x {pathway}: got in={got_in}, expected {wanted} {why}"


# --- pathways that do not exist yet: each fails when one appears, asking for a matrix row -----

SRC = Path(authkeep.__file__).parent


def test_no_websocket_endpoint_exists_yet(make_settings) -> None:
    """No relay yet, so no WebSocket handshake to check. A WebSocket route needs a row in the
    matrix above (and CHK-SE-09's no-token-in-the-upgrade-URL test)."""
    application = create_app(make_settings(metrics_enabled=True))
    sockets = [
        getattr(route, "path", "?")
        for route in application.routes
        if isinstance(route, WebSocketRoute | APIWebSocketRoute)
    ]
    assert sockets == []


def test_no_pathway_mints_or_accepts_es256_tokens_yet() -> None:
    """`authkeep.tokens` signs and verifies ES256 tokens, but nothing outside it uses them (the
    only token route is the public JWKS). `tokens.service.verify` does not look at the user,
    so the first route that mints or accepts a token for a user must check the account state
    and get a row in the matrix above."""
    users_of_service = []
    for path in sorted(SRC.rglob("*.py")):
        if path.parent.name == "tokens":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            if any(name.startswith("authkeep.tokens.service") for name in names):
                users_of_service.append(str(path.relative_to(SRC)))
    assert users_of_service == []
