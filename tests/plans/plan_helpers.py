"""Helpers for the plans tests: plans and subscriptions made through the real admin API,
users through the real sign-up (or straight into the database when a test needs many), and
threshold events read back."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from admin_helpers import bearer, signed_in_admin
from fastapi import FastAPI
from sqlalchemy import select

from authkeep.plans.models import ThresholdEvent
from authkeep.users import service as users
from support.secrets_scan import SCAN
from users.identity_helpers import database, new_email, new_user, user_row

JSON = dict[str, Any]


async def admin_token(app: FastAPI, client: httpx.AsyncClient) -> str:
    _, _, token = await signed_in_admin(app, client)
    return token


async def signed_in_user(app: FastAPI, client: httpx.AsyncClient) -> tuple[uuid.UUID, str]:
    """(user id, bearer token) of a new user signed up and signed in through the API."""
    email, _, token = await new_user(client)
    client.cookies.clear()
    return (await user_row(app, email)).id, token


async def stored_user(app: FastAPI) -> uuid.UUID:
    """A user row made directly (no password, no session): for tests that only need an id."""
    async with database(app).session_scope() as db:
        user = await users.create_user(db, new_email("plan"), password_hash=None)
        return user.id


async def create_plan(
    client: httpx.AsyncClient,
    token: str,
    *,
    features: list[str] | None = None,
    limits: dict[str, int] | None = None,
    slug: str | None = None,
) -> JSON:
    body = {
        "slug": slug or f"plan-{secrets.token_hex(3)}",
        "name": "A plan",
        "features": ["api", "exports"] if features is None else features,
        "limits": {"api": 100} if limits is None else limits,
    }
    response = await client.post("/api/admin/plans", json=body, headers=bearer(token))
    assert response.status_code == 201, response.text
    plan: JSON = response.json()
    return plan


async def subscribe(
    client: httpx.AsyncClient,
    token: str,
    user_id: uuid.UUID,
    plan_id: str,
    status: str = "active",
) -> JSON:
    response = await client.post(
        f"/api/admin/users/{user_id}/subscriptions",
        json={"plan_id": plan_id, "status": status},
        headers=bearer(token),
    )
    assert response.status_code == 201, response.text
    subscription: JSON = response.json()
    return subscription


async def create_api_key(client: httpx.AsyncClient, token: str, **fields: Any) -> JSON:
    """A key made through `POST /api/keys` for the token's user; the key goes to the scan."""
    fields.setdefault("name", "plans test key")
    response = await client.post("/api/keys", json=fields, headers=bearer(token))
    assert response.status_code == 201, response.text
    created: JSON = response.json()
    SCAN.register(created["key"])
    return created


async def threshold_events(app: FastAPI, subject: str | None = None) -> list[ThresholdEvent]:
    async with database(app).session_scope() as db:
        query = select(ThresholdEvent).order_by(ThresholdEvent.created_at)
        if subject is not None:
            query = query.where(ThresholdEvent.subject == subject)
        return list((await db.scalars(query)).all())


async def eventually(check: Callable[[], Awaitable[bool]], *, within: float = 30.0) -> None:
    """Wait until `check()` is true; fail with a message when it never becomes true. A bound
    on waiting for background work, not a speed assertion."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"condition not reached within {within} s")
        await asyncio.sleep(0.02)
