"""CHK-LG-04 (ASVS5 16.5.2-16.5.4): degrade gracefully, fail closed, a last-resort handler.

"Every 5xx has a generic body and an id; 0 unhandled 500s", on both engines:
- every kind of server-side failure (a bug in a route, in a dependency, a SQL error, a database
  that does not answer) leaves as the one JSON shape `{"error", "detail", "request_id"}`, with
  the generic text of its code and the id the response carries in `X-Request-ID`;
- with the database gone under a running app, a sample of real routes (sign-up, sign-in, the
  session check, keys, verify, admin, entitlements, usage) answers 503 `database_unavailable`
  or something that needs no database — never a 500, never driver text.

Proved elsewhere: the exact 500 body for a bug in a route, and no trace or SQL in it
(tests/test_app.py); 0 x 500 while a real PostgreSQL is stopped under `authkeep serve`, and
recovery after (tests/test_outage.py, FI-DB-01).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from admin.admin_helpers import signed_in_admin
from authkeep.app import create_app
from authkeep.config import load_settings
from authkeep.core.db import Database
from authkeep.core.deps import DB
from authkeep.core.dsn import candidates
from authkeep.errors import AuthkeepError, DatabaseUnavailable
from authkeep.keys.format import new_key
from keys.key_helpers import create_key
from support.secrets_scan import FIGURES, SCAN
from users.identity_helpers import bearer, new_email, new_user, strong_password

GENERIC = {
    AuthkeepError.code: AuthkeepError.detail,
    DatabaseUnavailable.code: DatabaseUnavailable.detail,
}
LEAKS = ("Traceback", "SELECT", "no_such_table", "asyncpg", "sqlite", "secret_column", "refused")


def broken_dependency() -> None:
    raise RuntimeError("dependency internals that must not leak")


def failure_routes() -> APIRouter:
    router = APIRouter(prefix="/test-failures")

    @router.get("/dependency", dependencies=[Depends(broken_dependency)])
    async def in_a_dependency() -> None:
        return None

    @router.get("/after-a-write")
    async def after_a_write(db: DB) -> None:
        await db.execute(text("SELECT 1"))
        raise KeyError("a key that must not leak")

    @router.get("/bad-sql")
    async def bad_sql(db: DB) -> None:
        await db.execute(text("SELECT secret_column FROM no_such_table"))

    @router.get("/db-gone")
    async def db_gone() -> None:
        raise OperationalError("SELECT secret_column", {}, ConnectionRefusedError("refused"))

    return router


@pytest.fixture
async def app(migrated_url: str, make_settings) -> AsyncIterator[FastAPI]:
    application = create_app(make_settings(database_url=migrated_url))
    application.include_router(failure_routes())
    async with application.router.lifespan_context(application):
        yield application


def assert_generic(response: httpx.Response) -> None:
    """A 5xx as the last-resort handler must write it."""
    SCAN.record(f"5xx {response.request.url.path}", response.text)
    body: dict[str, Any] = response.json()
    assert set(body) == {"error", "detail", "request_id"}, body
    assert body["detail"] == GENERIC[body["error"]], body
    assert body["request_id"] == response.headers["X-Request-ID"]
    assert response.headers["Cache-Control"] == "no-store"
    for leak in LEAKS:
        assert leak not in response.text


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/test-failures/dependency", 500),
        ("/test-failures/after-a-write", 500),
        ("/test-failures/bad-sql", 500),
        ("/test-failures/db-gone", 503),
    ],
)
async def test_every_kind_of_failure_leaves_generic_with_its_id_CHK_LG_04(
    client: httpx.AsyncClient, path: str, status: int
) -> None:
    response = await client.get(path, headers={"X-Request-ID": "trace-me-42"})
    assert response.status_code == status
    assert_generic(response)
    assert response.json()["request_id"] == "trace-me-42"
    if status == 503:
        assert response.headers["Retry-After"].isdigit()


async def test_real_routes_without_a_database_answer_503_never_500_CHK_LG_04(
    app: FastAPI, client: httpx.AsyncClient, closed_port: int
) -> None:
    email, password, token = await new_user(client)
    _, _, admin_token = await signed_in_admin(app, client)
    client.cookies.clear()
    key = (await create_key(client, token))["key"]
    unknown_key = SCAN.register(new_key("ak"))
    calls: list[tuple[str, str, dict[str, Any]]] = [
        (
            "POST",
            "/api/auth/sign-up",
            {"json": {"email": new_email(), "password": strong_password()}},
        ),
        ("POST", "/api/auth/sign-in", {"json": {"email": email, "password": password}}),
        ("GET", "/api/auth/session", {"headers": bearer(token)}),
        ("GET", "/api/auth/sessions", {"headers": bearer(token)}),
        ("POST", "/api/auth/sign-out", {"headers": bearer(token)}),
        ("GET", "/api/keys", {"headers": bearer(token)}),
        ("POST", "/api/keys/verify", {"headers": {"X-API-Key": unknown_key}}),
        ("POST", "/api/usage/report", {"headers": {"X-API-Key": key}, "json": {"count": 1}}),
        ("GET", "/api/usage", {"headers": bearer(token)}),
        ("POST", "/api/entitlements/check", {"headers": bearer(token), "json": {"feature": "x"}}),
        ("GET", "/api/admin/users", {"headers": bearer(admin_token)}),
        ("GET", "/api/admin/audit", {"headers": bearer(admin_token)}),
        ("GET", "/health/db", {}),
    ]
    settings = load_settings(
        database_url=f"postgresql://nobody@127.0.0.1:{closed_port}/gone", db_pool_timeout=1
    )
    gone = Database.open(candidates(settings)[0], settings)
    # Swapped by hand, not with monkeypatch: the app's own shutdown must close the real one.
    real, app.state.database = app.state.database, gone
    statuses: Counter[int] = Counter()
    try:
        for method, path, options in calls:
            response = await client.request(method, path, **options)
            statuses[response.status_code] += 1
            assert response.status_code != 500, (path, response.text)
            if response.status_code >= 500:
                assert_generic(response)
                assert response.status_code == 503, (path, response.text)
    finally:
        app.state.database = real
        await gone.dispose()
    engine = real.engine.dialect.name
    FIGURES.append(
        f"CHK-LG-04 {engine}: {len(calls)} routes with the database gone: "
        f"{statuses[503]} x 503 with a generic body and id, {statuses[500]} x 500, "
        f"others {sorted((s, n) for s, n in statuses.items() if s < 500)}"
    )
    assert statuses[503] == len(calls)  # each of these routes needs the database
