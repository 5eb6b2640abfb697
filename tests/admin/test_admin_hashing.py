"""Admin paths that hash (create-admin, the setup link) never hold a database connection while
argon2 runs (FI-DOS-01; "hash outside any unit of work")."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import httpx
from admin_helpers import new_email, strong_password
from fastapi import FastAPI

from authkeep.core.security import PasswordHashing
from authkeep.users import admin
from authkeep.users.setup_link import issue_setup_token
from users.identity_helpers import database

T = TypeVar("T")


class ConnectionProbe(PasswordHashing):
    """The real hasher, also noting how many pooled connections are checked out whenever an
    argon2 job starts."""

    checked_out: list[int]
    pool: Any

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        self.checked_out.append(self.pool.checkedout())
        return await super()._run(fn, *args)


async def test_no_connection_is_held_while_admin_passwords_hash(
    app: FastAPI, client: httpx.AsyncClient
):
    app.state.passwords.close()
    probe = ConnectionProbe(workers=2)
    probe.checked_out = []
    probe.pool = database(app).engine.pool
    app.state.passwords = probe
    settings = app.state.settings
    async with database(app).session_scope() as db:
        token = await issue_setup_token(db, settings)
    assert token is not None
    body = {"token": token, "email": new_email("owner"), "password": strong_password()}
    assert (await client.post("/api/admin/setup", json=body)).status_code == 201
    email = new_email("ops")
    for password in (strong_password(), strong_password()):  # create, then verify + rehash
        await admin.ensure_admin(database(app), probe, settings, email, password)
    assert len(probe.checked_out) == 4
    assert probe.checked_out == [0, 0, 0, 0]
