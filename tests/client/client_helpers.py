"""Helpers for the client tests: an `AuthkeepClient` talking to a real authkeep app (in process
over ASGI, or a server process), and the usage the server counted."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI

from authkeep.client import AuthkeepClient
from support.secrets_scan import SCAN
from users.identity_helpers import bearer, client_for

AUTHKEEP_URL = "http://testserver"


@asynccontextmanager
async def authkeep_client(app: FastAPI, **options: Any) -> AsyncIterator[AuthkeepClient]:
    """An `AuthkeepClient` for the in-process `app`; closed (usage reported) on exit."""
    http = client_for(app, base_url=AUTHKEEP_URL)
    async with http, AuthkeepClient(AUTHKEEP_URL, http_client=http, **options) as client:
        yield client


async def counted_usage(app: FastAPI, token: str, **query: str) -> dict[str, Any]:
    """The server's usage totals for the user of `token`, after the meter's next flush."""
    await app.state.meter.flush()
    async with client_for(app) as http:
        response = await http.get(
            "/api/usage", params={"granularity": "day", **query}, headers=bearer(token)
        )
    assert response.status_code == 200, response.text
    totals: dict[str, Any] = response.json()["totals"]
    return totals


async def revoke(http: httpx.AsyncClient, token: str, key_id: str) -> None:
    response = await http.post(f"/api/keys/{key_id}/revoke", headers=bearer(token))
    assert response.status_code == 200, response.text


def no_key_in(text: str, *keys: str) -> bool:
    SCAN.record("client test output", text)
    return not any(key in text for key in keys)
