"""The app on both engines, in process: health, `/docs`, the one error format (CHK-LG-04)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from authkeep.app import create_app
from authkeep.core.deps import DB
from authkeep.errors import ConfigError


def _error_routes() -> APIRouter:
    router = APIRouter(prefix="/test-errors")

    @router.get("/bug")
    async def bug() -> None:
        raise ValueError("internal detail that must not leak")

    @router.get("/db-down")
    async def db_down() -> None:
        raise OperationalError("SELECT secret_column FROM users", {}, OSError("refused"))

    @router.get("/bad-sql")
    async def bad_sql(db: DB) -> None:
        await db.execute(text("SELECT * FROM no_such_table"))

    @router.get("/typed")
    async def typed(count: int) -> dict[str, int]:
        return {"count": count}

    return router


@pytest.fixture
async def app(migrated_url: str, make_settings) -> AsyncIterator[FastAPI]:
    application = create_app(make_settings(database_url=migrated_url))
    application.include_router(_error_routes())
    async with application.router.lifespan_context(application):
        yield application


@pytest.mark.parametrize("path", ["/health", "/api/health"])
async def test_health_needs_nothing(client: httpx.AsyncClient, path: str):
    response = await client.get(path)
    assert (response.status_code, response.json()) == (200, {"status": "ok"})
    assert response.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("path", ["/health/db", "/api/health/db"])
async def test_health_db_runs_a_real_query(client: httpx.AsyncClient, path: str):
    response = await client.get(path)
    assert response.json() == {
        "status": "ok",
        "database": "reachable",
        "last_verified_backup_age_seconds": None,
    }
    assert response.headers["Cache-Control"] == "no-store"


async def test_docs_and_openapi_are_served(client: httpx.AsyncClient):
    assert (await client.get("/docs")).status_code == 200
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert {"/health", "/health/db"} <= set(paths)


async def test_unknown_route_is_json_not_found(client: httpx.AsyncClient):
    response = await client.get("/no/such/thing")
    assert (response.status_code, response.json()["error"]) == (404, "not_found")


async def test_validation_errors_use_the_error_format(client: httpx.AsyncClient):
    response = await client.get("/test-errors/typed", params={"count": "many"})
    body = response.json()
    assert response.status_code == 422
    assert body["error"] == "validation_error"
    assert "count" in body["detail"]


async def test_unexpected_errors_are_500_without_a_trace(client: httpx.AsyncClient):
    response = await client.get("/test-errors/bug")
    assert response.status_code == 500
    body = response.json()
    assert body == {
        "error": "internal_error",
        "detail": "Something went wrong on our side.",
        "request_id": response.headers["X-Request-ID"],
    }
    assert "Traceback" not in response.text
    assert "must not leak" not in response.text


async def test_database_errors_map_to_503_without_sql_or_driver(client: httpx.AsyncClient):
    response = await client.get("/test-errors/db-down")
    assert response.status_code == 503
    assert response.headers["Retry-After"].isdigit()
    assert response.json()["error"] == "database_unavailable"
    assert "SELECT" not in response.text
    assert "secret_column" not in response.text


async def test_sql_errors_are_500_without_sql_or_driver(client: httpx.AsyncClient):
    response = await client.get("/test-errors/bad-sql")
    assert response.status_code == 500
    for leak in ("no_such_table", "SELECT", "asyncpg", "sqlite", "Traceback"):
        assert leak not in response.text


def test_edge_role_refuses_to_start_without_login(make_settings):
    with pytest.raises(ConfigError, match="AUTHKEEP_LOGIN_URL"):
        create_app(make_settings(role="edge"))
