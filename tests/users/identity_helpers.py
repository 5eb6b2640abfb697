"""Helpers for the identity tests: make users through the real API, read rows back, build
apps with their own settings. Every password and token made here is registered with the
suite-wide secret scan."""

from __future__ import annotations

import secrets
import statistics
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import func, select

from authkeep.app import create_app
from authkeep.audit.models import AuditEvent
from authkeep.config import Settings
from authkeep.core.db import Database
from authkeep.core.security import PasswordHashing
from authkeep.users.models import User
from support.secrets_scan import SCAN

SAME_ORIGIN = {"Sec-Fetch-Site": "same-origin"}


def strong_password(prefix: str = "violet-harbour-") -> str:
    """A policy-compliant password (≥ 15 code points, not common, not context)."""
    return SCAN.register(f"{prefix}{secrets.token_hex(6)}")


def new_email(tag: str = "user") -> str:
    return f"{tag}-{secrets.token_hex(4)}@example.com"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def same_origin_csrf(client: httpx.AsyncClient) -> dict[str, str]:
    """The headers a page of this site sends with a cookie request that changes state: the
    same-origin `Sec-Fetch-Site` and the session's CSRF token, read the way the page reads it
    (`GET /api/auth/session` with the cookie in `client`'s jar)."""
    response = await client.get("/api/auth/session")
    assert response.status_code == 200, response.text
    return {**SAME_ORIGIN, "X-CSRF-Token": SCAN.register(response.json()["csrf_token"])}


def database(app: FastAPI) -> Database:
    db: Database = app.state.database
    return db


def cheap_hashing(queue_limit: int = 64) -> PasswordHashing:
    """Test-only argon2id parameters (1 MiB, t=1) for tests that need many hashes fast."""
    return PasswordHashing(workers=2, queue_limit=queue_limit, memory_kib=1024, time_cost=1)


async def sign_up(
    client: httpx.AsyncClient, email: str, password: str, **extra: Any
) -> httpx.Response:
    return await client.post(
        "/api/auth/sign-up", json={"email": email, "password": password, **extra}
    )


async def sign_in(
    client: httpx.AsyncClient,
    email: str,
    password: str,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    response = await client.post(
        "/api/auth/sign-in", json={"email": email, "password": password}, headers=headers
    )
    body = response.json() if response.status_code == 200 else {}
    if "token" in body or "mfa_token" in body:
        SCAN.register(body.get("token") or body["mfa_token"])
    else:
        SCAN.record("sign-in response", response.text)
    return response


async def new_user(
    client: httpx.AsyncClient, email: str | None = None, password: str | None = None
) -> tuple[str, str, str]:
    """Sign up and sign in; returns (email, password, bearer token). The client's cookie jar
    is emptied first (a sign-in ends the session whose cookie it carries) and then holds the
    new user's session cookie."""
    email = email or new_email()
    password = password or strong_password()
    assert (await sign_up(client, email, password)).status_code == 202
    client.cookies.clear()
    response = await sign_in(client, email, password)
    assert response.status_code == 200, response.text
    return email, password, response.json()["token"]


async def user_row(app: FastAPI, email: str) -> User:
    async with database(app).session_scope() as db:
        user = await db.scalar(select(User).where(User.email == email))
        assert user is not None
        return user


async def count_rows(app: FastAPI, model: Any, *conditions: Any) -> int:
    async with database(app).session_scope() as db:
        return int(await db.scalar(select(func.count()).select_from(model).where(*conditions)))


async def audit_rows(app: FastAPI, action: str) -> list[AuditEvent]:
    async with database(app).session_scope() as db:
        rows = await db.scalars(
            select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.at)
        )
        return list(rows.all())


def client_for(
    app: FastAPI, *, ip: str = "127.0.0.1", base_url: str = "http://testserver"
) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(ip, 40000))
    return httpx.AsyncClient(transport=transport, base_url=base_url)


@asynccontextmanager
async def started_app(
    make_settings: Callable[..., Settings], url: str, **overrides: Any
) -> AsyncIterator[FastAPI]:
    application = create_app(make_settings(database_url=url, **overrides))
    async with application.router.lifespan_context(application):
        yield application


def median_ratio(a: list[float], b: list[float]) -> float:
    return statistics.median(a) / statistics.median(b)
