"""Helpers for the email-flow tests: an app wired to the test SMTP server, the four email
routes, and accounts made straight through the service (no hash needed for mail tests)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI
from identity_helpers import cheap_hashing, database, new_email, new_user, started_app

from authkeep.config import Settings
from authkeep.users import service as users
from support.secrets_scan import SCAN
from support.smtp import Mailbox


def smtp_settings(mailbox: Mailbox) -> dict[str, Any]:
    return {"smtp_host": "127.0.0.1", "smtp_port": mailbox.port, "smtp_starttls": False}


@asynccontextmanager
async def mail_app(
    make_settings: Callable[..., Settings],
    url: str,
    mailbox: Mailbox,
    *,
    cheap: bool = False,
    **overrides: Any,
) -> AsyncIterator[FastAPI]:
    """A started app that sends mail to `mailbox`. `cheap=True` swaps in test-only argon2
    parameters (1 MiB, t=1) so tests that hash hundreds of times stay fast."""
    async with started_app(make_settings, url, **smtp_settings(mailbox), **overrides) as app:
        if cheap:
            app.state.passwords.close()
            app.state.passwords = cheap_hashing(queue_limit=512)
        yield app


async def make_accounts(app: FastAPI, count: int, tag: str = "mail") -> list[str]:
    """`count` password-less accounts (a reset is how such a user sets a password)."""
    emails = [new_email(tag) for _ in range(count)]
    async with database(app).session_scope() as db:
        for email in emails:
            await users.create_user(db, email, password_hash=None)
    return emails


async def forgot(
    client: httpx.AsyncClient, email: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    response = await client.post(
        "/api/auth/password/forgot", json={"email": email}, headers=headers
    )
    SCAN.record("forgot response", response.text)
    return response


async def reset(client: httpx.AsyncClient, token: str, new_password: str) -> httpx.Response:
    response = await client.post(
        "/api/auth/password/reset", json={"token": token, "new_password": new_password}
    )
    SCAN.record("reset response", response.text)
    return response


async def confirm(client: httpx.AsyncClient, token: str) -> httpx.Response:
    response = await client.post("/api/auth/verify-email/confirm", json={"token": token})
    SCAN.record("confirm response", response.text)
    return response


async def request_verification(
    client: httpx.AsyncClient, *, email: str | None = None, headers: dict[str, str] | None = None
) -> httpx.Response:
    body = {"email": email} if email is not None else {}
    response = await client.post("/api/auth/verify-email/request", json=body, headers=headers)
    SCAN.record("verify request response", response.text)
    return response


def without_request_id(response: httpx.Response) -> tuple[int, bytes, list[tuple[str, str]]]:
    """Status, body and headers, minus the per-request id and the client's own API budget
    (RateLimit-*, which counts down with every request whatever the account): what must not
    tell accounts apart."""
    headers = sorted(
        (k, v)
        for k, v in response.headers.items()
        if k != "x-request-id" and not k.startswith("ratelimit-")
    )
    return response.status_code, response.content, headers


VERIFY_SUBJECT = "Confirm your email address for authkeep"


async def signed_up_user(client: httpx.AsyncClient, mailbox: Mailbox) -> tuple[str, str, str]:
    """`new_user`, then take out the verification mail that sign-up sends (asserting it came),
    so a test sees only the mails its own steps cause."""
    email, password, token = await new_user(client)
    [welcome] = mailbox.to(email)
    assert welcome.message["Subject"] == VERIFY_SUBJECT
    SCAN.register(welcome.token())
    mailbox.messages.remove(welcome)
    return email, password, token
