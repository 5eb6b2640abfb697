"""Helpers for the admin tests: admins made through the library the CLI wraps, users and
sessions through the real API (the identity helpers), and the CLI run as a user runs it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx
from fastapi import FastAPI
from typer.testing import CliRunner, Result

from authkeep.cli import app as cli_app
from authkeep.config import Settings
from authkeep.users import admin
from support.secrets_scan import SCAN
from users.identity_helpers import (
    bearer,
    client_for,
    database,
    new_email,
    new_user,
    sign_in,
    started_app,
    strong_password,
)

T = TypeVar("T")
runner = CliRunner()

__all__ = [
    "bearer",
    "client_for",
    "database",
    "invoke",
    "make_admin",
    "new_email",
    "new_user",
    "on_app",
    "sign_in",
    "signed_in_admin",
    "started_app",
    "strong_password",
]


def invoke(*args: str, env: dict[str, str] | None = None, input: str | None = None) -> Result:
    """Run `authkeep …` in process; its output goes to the secret scan."""
    result = runner.invoke(cli_app, list(args), env=env, input=input)
    SCAN.record(f"cli:{' '.join(args)}", result.output)
    return result


def json_out(result: Result) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(result.stdout)
    return body


async def make_admin(app: FastAPI, email: str | None = None) -> tuple[str, str]:
    """An admin made the way `authkeep users create-admin` makes one; (email, password)."""
    email = email or new_email("admin")
    password = strong_password("admin-harbour-")
    settings: Settings = app.state.settings
    await admin.ensure_admin(database(app), app.state.passwords, settings, email, password)
    return email, password


async def signed_in_admin(app: FastAPI, client: httpx.AsyncClient) -> tuple[str, str, str]:
    """(email, password, bearer token) of a freshly signed-in admin."""
    email, password = await make_admin(app)
    client.cookies.clear()
    response = await sign_in(client, email, password)
    assert response.status_code == 200, response.text
    client.cookies.clear()
    return email, password, response.json()["token"]


def on_app(
    make_settings: Callable[..., Settings],
    url: str,
    work: Callable[[FastAPI, httpx.AsyncClient], Awaitable[T]],
) -> T:
    """Start the app on `url`, run `work` with a client, stop it: for synchronous CLI tests,
    which must not run inside an event loop of their own (the CLI starts one)."""

    async def go() -> T:
        async with (
            started_app(make_settings, url) as application,
            client_for(application) as client,
        ):
            return await work(application, client)

    return asyncio.run(go())
