"""Helpers for the API key tests: keys made through the real API (every plaintext registered
with the suite-wide secret scan), rows read back from the database, the verify cache primed
with an entry to watch it being dropped."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import select

from authkeep.keys.cache import key_cache_for
from authkeep.keys.models import ApiKey
from authkeep.models import Base
from authkeep.users.models import User
from support.secrets_scan import SCAN
from users.identity_helpers import bearer, database

KEYS = "/api/keys"


def admin_keys(user_id: uuid.UUID | str) -> str:
    return f"/api/admin/users/{user_id}/keys"


def register_key(response: httpx.Response) -> dict[str, Any]:
    """The body of a create or reroll answer; its key goes to the secret scan."""
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    SCAN.register(body["key"])
    return body


async def create_key(
    client: httpx.AsyncClient, token: str, path: str = KEYS, **fields: Any
) -> dict[str, Any]:
    """Create a key through the API (default name "test key"); returns the `KeyCreated` body."""
    fields.setdefault("name", "test key")
    return register_key(await client.post(path, json=fields, headers=bearer(token)))


async def reroll_key(
    client: httpx.AsyncClient, token: str, key_id: str, grace_seconds: int = 0
) -> httpx.Response:
    response = await client.post(
        f"{KEYS}/{key_id}/reroll", json={"grace_seconds": grace_seconds}, headers=bearer(token)
    )
    if response.status_code == 201:
        SCAN.register(response.json()["key"])
    else:
        SCAN.record("reroll refusal", response.text)
    return response


async def user_id_of(app: FastAPI, email: str) -> uuid.UUID:
    async with database(app).session_scope() as db:
        found = await db.scalar(select(User.id).where(User.email == email))
        assert found is not None
        return found


async def key_row(app: FastAPI, key_id: uuid.UUID | str) -> ApiKey | None:
    async with database(app).session_scope() as db:
        return await db.get(ApiKey, uuid.UUID(str(key_id)))


async def key_rows(app: FastAPI, user_id: uuid.UUID) -> list[ApiKey]:
    async with database(app).session_scope() as db:
        found = await db.scalars(select(ApiKey).where(ApiKey.user_id == user_id))
        return list(found.all())


def row_state(key: ApiKey | None) -> dict[str, Any]:
    """Every column of a key row, to compare before and after."""
    assert key is not None
    return {column.key: getattr(key, column.key) for column in ApiKey.__mapper__.column_attrs}


async def every_stored_value(app: FastAPI) -> list[tuple[str, str]]:
    """(table, value as text) for every column of every row of every table."""
    values: list[tuple[str, str]] = []
    async with database(app).session_scope() as db:
        for table in Base.metadata.sorted_tables:
            for row in (await db.execute(select(table))).all():
                values.extend((table.name, str(value)) for value in row)
    return values


def prime_cache(app: FastAPI, key_id: uuid.UUID | str, user_id: uuid.UUID) -> str:
    """Put an entry for the key into the app's verify cache; returns its digest."""
    digest = f"primed-{uuid.uuid4().hex}"
    key_cache_for(app).put(digest, uuid.UUID(str(key_id)), user_id, {"primed": True})
    assert key_cache_for(app).get(digest) is not None
    return digest


def cached(app: FastAPI, digest: str) -> bool:
    return key_cache_for(app).get(digest) is not None
