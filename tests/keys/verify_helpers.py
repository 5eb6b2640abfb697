"""Helpers for the verify tests: users, keys, plans and subscriptions inserted straight into the
database (so these tests do not depend on the key and plan CRUD), a statement counter on the
engine, and the revoke step as the CRUD does it (commit, then invalidate).

Every key made here is registered with the suite-wide secret scan."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import event, update
from sqlalchemy.engine import Connection

from authkeep.core.models import utcnow
from authkeep.keys.cache import invalidations_for
from authkeep.keys.format import display_start, key_digest, new_key
from authkeep.keys.models import ApiKey
from authkeep.plans.models import Plan, Subscription
from authkeep.users.models import User
from support.secrets_scan import SCAN
from users.identity_helpers import database

VERIFY = "/api/keys/verify"


@dataclass(frozen=True)
class IssuedKey:
    key: str
    key_id: uuid.UUID
    user_id: uuid.UUID


async def make_user(app: FastAPI, **fields: Any) -> uuid.UUID:
    user = User(email=f"owner-{secrets.token_hex(5)}@example.com", role="user", **fields)
    async with database(app).session_scope() as db:
        db.add(user)
    return user.id


async def make_key(
    app: FastAPI,
    user_id: uuid.UUID | None = None,
    prefix: str = "ak",
    *,
    scanned: bool = True,
    **fields: Any,
) -> IssuedKey:
    """An API key row for `user_id` (a new user when None); `fields` are ApiKey columns.
    `scanned=False` only for a test that puts the key in a URL on purpose (the test client
    logs URLs); such a test asserts on the server's answers itself."""
    if user_id is None:
        user_id = await make_user(app)
    key = new_key(prefix)
    if scanned:
        SCAN.register(key)
    secret = app.state.settings.secret_key.get_secret_value()
    fields.setdefault("name", "test key")
    row = ApiKey(
        user_id=user_id,
        prefix=prefix,
        start=display_start(key),
        key_hash=key_digest(secret, key),
        **fields,
    )
    async with database(app).session_scope() as db:
        db.add(row)
    return IssuedKey(key, row.id, user_id)


async def make_plan(
    app: FastAPI, features: list[str], limits: dict[str, int] | None = None
) -> uuid.UUID:
    plan = Plan(
        slug=f"plan-{secrets.token_hex(4)}",
        name="Test plan",
        features=features,
        limits=limits or {},
    )
    async with database(app).session_scope() as db:
        db.add(plan)
    return plan.id


async def subscribe(
    app: FastAPI, user_id: uuid.UUID, plan_id: uuid.UUID, status: str = "active"
) -> None:
    async with database(app).session_scope() as db:
        db.add(Subscription(user_id=user_id, plan_id=plan_id, status=status))


async def change_key(app: FastAPI, key_id: uuid.UUID, **values: Any) -> None:
    """Change the key row, commit, then tell the caches — the order the key CRUD uses."""
    async with database(app).session_scope() as db:
        await db.execute(update(ApiKey).where(ApiKey.id == key_id).values(**values))
        await db.commit()
        await invalidations_for(app).key_changed(key_id)


async def revoke(app: FastAPI, key_id: uuid.UUID) -> None:
    await change_key(app, key_id, revoked_at=utcnow(), version=ApiKey.version + 1)


async def change_user(app: FastAPI, user_id: uuid.UUID, **values: Any) -> None:
    async with database(app).session_scope() as db:
        await db.execute(update(User).where(User.id == user_id).values(**values))
        await db.commit()
        await invalidations_for(app).user_changed(user_id)


async def verify(
    client: httpx.AsyncClient,
    key: str,
    body: dict[str, Any] | None = None,
    header: str = "x-api-key",
) -> dict[str, Any]:
    """POST /api/keys/verify with the key in `header`; asserts the 200 every outcome gets."""
    value = f"Bearer {key}" if header == "authorization" else key
    # Bytes, so a test can send any text; servers read header bytes as latin-1.
    response = await client.post(VERIFY, json=body, headers={header.encode(): value.encode()})
    SCAN.record("verify response", response.text)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


@dataclass
class StatementLog:
    """SQL statements the engine ran (transaction control excluded) and connections taken."""

    statements: list[str] = field(default_factory=list)
    checkouts: int = 0

    def writes(self) -> list[str]:
        return [s for s in self.statements if not s.lstrip().upper().startswith("SELECT")]


TRANSACTION_CONTROL = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE")


@contextmanager
def statements(app: FastAPI) -> Iterator[StatementLog]:
    """Count what reaches the database while the block runs."""
    log = StatementLog()
    engine = database(app).engine.sync_engine

    def on_execute(
        _conn: Connection, _cursor: Any, statement: str, *_args: Any, **_kwargs: Any
    ) -> None:
        if not statement.lstrip().upper().startswith(TRANSACTION_CONTROL):
            log.statements.append(statement)

    def on_checkout(*_args: Any) -> None:
        log.checkouts += 1

    event.listen(engine, "before_cursor_execute", on_execute)
    event.listen(engine.pool, "checkout", on_checkout)
    try:
        yield log
    finally:
        event.remove(engine, "before_cursor_execute", on_execute)
        event.remove(engine.pool, "checkout", on_checkout)


MeterCall = tuple[uuid.UUID, uuid.UUID, str, str, int]


def spy_meter(app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> list[MeterCall]:
    """Every `meter.record` call from now on, each passed on to the real meter."""
    meter = app.state.meter
    calls: list[MeterCall] = []
    original = meter.record

    def record(key_id: uuid.UUID, user_id: uuid.UUID, owner: str, outcome: str, units: int) -> None:
        calls.append((key_id, user_id, owner, outcome, units))
        original(key_id, user_id, owner, outcome, units)

    monkeypatch.setattr(meter, "record", record)
    return calls
