"""`examples/protected_api/app.py` against a real `authkeep serve` process on SQLite: the user and
keys are made over HTTP, the example runs in process with `AUTHKEEP_URL` pointing at the server.

Revocation is checked with `AUTHKEEP_CACHE_TTL=0` (seen at once, CHK-AK-04); the cached
instance checks that its cache hits are counted at the server exactly once (CHK-AK-05).
"""

from __future__ import annotations

import asyncio
import importlib.util
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from keys.key_helpers import KEYS, register_key
from support.secrets_scan import FIGURES, SCAN
from support.server import ServerProcess
from users.identity_helpers import bearer, new_user

EXAMPLE = Path(__file__).parents[2] / "examples" / "protected_api" / "app.py"
PRODUCT_URL = "http://reports.test"


def load_example(monkeypatch: pytest.MonkeyPatch, authkeep_url: str, cache_ttl: str) -> Any:
    """A fresh copy of the example module, configured by the environment as in production."""
    monkeypatch.setenv("AUTHKEEP_URL", authkeep_url)
    monkeypatch.setenv("AUTHKEEP_CACHE_TTL", cache_ttl)
    spec = importlib.util.spec_from_file_location(f"protected_api_{secrets.token_hex(4)}", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module: ModuleType = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@asynccontextmanager
async def running(example: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The example app started (its lifespan closes its AuthkeepClient) and a client for it."""
    async with example.app.router.lifespan_context(example.app):
        transport = httpx.ASGITransport(app=example.app)
        async with httpx.AsyncClient(transport=transport, base_url=PRODUCT_URL) as user_agent:
            yield user_agent


async def make_key(authkeep: httpx.AsyncClient, token: str, *permissions: str) -> dict[str, Any]:
    response = await authkeep.post(
        KEYS, json={"name": "reports", "permissions": list(permissions)}, headers=bearer(token)
    )
    return register_key(response)


async def usage_count(authkeep: httpx.AsyncClient, token: str, key_id: str) -> int:
    response = await authkeep.get(
        "/api/usage", params={"granularity": "day", "key_id": key_id}, headers=bearer(token)
    )
    assert response.status_code == 200, response.text
    count: int = response.json()["totals"]["count"]
    return count


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for this module's tests; each test makes its own user and keys."""
    workdir = tmp_path_factory.mktemp("authkeep")
    with ServerProcess(workdir, {"AUTHKEEP_USAGE_FLUSH_SECONDS": "0.2"}) as running_server:
        yield running_server


async def test_the_example_protects_its_routes_with_keys_and_sessions(
    server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as authkeep:
        email, _, token = await new_user(authkeep)
        reader = await make_key(authkeep, token, "reports.read")
        writer = await make_key(authkeep, token, "reports.read", "reports.write")
        example = load_example(monkeypatch, server.url, cache_ttl="0")
        async with running(example) as user_agent:

            async def call(method: str, key: str | None, **kw: Any) -> httpx.Response:
                headers = {"X-API-Key": key} if key else {}
                return await user_agent.request(method, "/reports", headers=headers, **kw)

            created = await call("POST", writer["key"], json={"title": "Q3"})
            assert created.status_code == 201, created.text
            listed = await call("GET", reader["key"])
            assert listed.status_code == 200, listed.text
            assert listed.json() == [{"id": 1, "title": "Q3", "owner": reader["owner"]}]

            wrong = await call("POST", reader["key"], json={"title": "Q4"})
            assert (wrong.status_code, wrong.json()["error"]) == (403, "insufficient_permissions")
            missing = await call("GET", None)
            assert (missing.status_code, missing.json()["error"]) == (401, "missing_api_key")

            revoked = await authkeep.post(f"{KEYS}/{reader['id']}/revoke", headers=bearer(token))
            assert revoked.status_code == 200
            after = await call("GET", reader["key"])
            assert (after.status_code, after.json()["error"]) == (401, "api_key_disabled")

            me = await user_agent.get("/me", headers=bearer(token))
            assert (me.status_code, me.json()["email"]) == (200, email)
            anonymous = await user_agent.get("/me")
            assert (anonymous.status_code, anonymous.json()["error"]) == (401, "unauthorized")
            SCAN.record("example answers", created.text + listed.text + wrong.text + after.text)


async def test_the_examples_cache_hits_are_counted_once_at_the_server(
    server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CHK-AK-05 over real HTTP: 40 calls through the example (1 verify + 39 cache hits)
    are 40 uses at the server."""
    calls = 40
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as authkeep:
        _, _, token = await new_user(authkeep)
        reader = await make_key(authkeep, token, "reports.read")
        example = load_example(monkeypatch, server.url, cache_ttl="60")
        async with running(example) as user_agent:
            for _ in range(calls):
                response = await user_agent.get("/reports", headers={"X-API-Key": reader["key"]})
                assert response.status_code == 200, response.text
            assert example.authkeep.usage.reported + example.authkeep.usage.pending == calls - 1
        assert example.authkeep.usage.reported == calls - 1
        # The server writes its counts every 0.2 s: wait for them, then make sure no more come.
        seen = 0
        for _ in range(100):
            seen = await usage_count(authkeep, token, reader["id"])
            if seen >= calls:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        assert await usage_count(authkeep, token, reader["id"]) == seen == calls
    FIGURES.append(f"example app: {calls} calls ({calls - 1} cache hits) -> {seen} counted")
