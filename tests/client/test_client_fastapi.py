"""The FastAPI/Starlette dependencies (`authkeep.client.fastapi`) protecting a product app that
asks the real authkeep app (both engines): statuses, the `{"error", "detail"}` body and
Retry-After by outcome, keys only from headers (CHK-AK-02), sessions by bearer or cookie with
the CSRF rule: same site and the session's CSRF token (CHK-CK-02), failing closed when
authkeep cannot answer.

No `from __future__ import annotations` here: FastAPI must see the route annotations, which
name dependencies built inside `product_app`."""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

import httpx
import pytest
from client_helpers import AUTHKEEP_URL, revoke
from fastapi import Depends, FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from authkeep.client import AuthkeepClient, SessionInfo, VerifyResult
from authkeep.client.fastapi import (
    exception_handlers,
    require_api_key,
    require_session,
    verified_api_key,
)
from authkeep.keys.format import new_key
from authkeep.sessions.cookies import PLAIN_NAME
from keys.key_helpers import create_key
from users.identity_helpers import bearer, client_for, new_user, sign_in

PRODUCT_URL = "http://product.test"


def product_app(authkeep: AuthkeepClient, *, handlers: bool = True) -> FastAPI:
    app = FastAPI(exception_handlers=exception_handlers if handlers else None)
    reader = Annotated[VerifyResult, Depends(require_api_key(authkeep, "docs.read"))]
    signed_in = Annotated[SessionInfo, Depends(require_session(authkeep))]

    @app.get("/docs-list")
    async def docs_list(key: reader) -> dict[str, str | None]:
        return {"owner": key.owner, "key_id": str(key.key_id)}

    @app.get("/me")
    async def me(session: signed_in) -> dict[str, str]:
        return {"email": session.user.email}

    @app.post("/me/notes")
    async def add_note(session: signed_in) -> dict[str, str]:
        return {"email": session.user.email}

    return app


@asynccontextmanager
async def product(
    app: FastAPI, *, authkeep_url: str = AUTHKEEP_URL, handlers: bool = True
) -> AsyncIterator[httpx.AsyncClient]:
    """The product app, its own `AuthkeepClient` (cache off) asking `app`, and a client for it."""
    to_authkeep = client_for(app, base_url=AUTHKEEP_URL)
    in_process = to_authkeep if authkeep_url == AUTHKEEP_URL else None
    authkeep = AuthkeepClient(authkeep_url, cache_ttl=0, timeout=1, http_client=in_process)
    transport = httpx.ASGITransport(app=product_app(authkeep, handlers=handlers))
    async with (
        to_authkeep,
        authkeep,
        httpx.AsyncClient(transport=transport, base_url=PRODUCT_URL) as user_agent,
    ):
        yield user_agent


def refused(response: httpx.Response, status: int, error: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"}
    assert body["error"] == error
    assert body["detail"]
    assert response.headers["Cache-Control"] == "no-store"


async def test_a_valid_key_in_a_header_reaches_the_route(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    _, _, token = await new_user(client)
    key = await create_key(client, token, permissions=["docs.read"])
    async with product(app) as user_agent:
        by_header = await user_agent.get("/docs-list", headers={"X-API-Key": key["key"]})
        by_bearer = await user_agent.get(
            "/docs-list", headers={"Authorization": f"Bearer {key['key']}"}
        )
    for response in (by_header, by_bearer):
        assert response.status_code == 200, response.text
        assert response.json() == {"owner": key["owner"], "key_id": key["id"]}


async def test_no_key_or_a_key_in_the_url_is_401_missing_api_key(
    app: FastAPI, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CHK-AK-02: a key in the query string is never read. (The test's own httpx client logs
    the URL this test abuses, so its logger is off; every other log record is still scanned.)"""
    monkeypatch.setattr(logging.getLogger("httpx"), "disabled", True)
    _, _, token = await new_user(client)
    key = await create_key(client, token, permissions=["docs.read"])
    async with product(app) as user_agent:
        refused(await user_agent.get("/docs-list"), 401, "missing_api_key")
        in_url = await user_agent.get(
            "/docs-list", params={"api_key": key["key"], "key": key["key"]}
        )
        refused(in_url, 401, "missing_api_key")
        assert key["key"] not in in_url.text
        refused(
            await user_agent.get("/docs-list", headers={"X-API-Key": " "}), 401, "missing_api_key"
        )


async def test_each_refusal_has_its_status_and_code(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    _, _, token = await new_user(client)
    writer = await create_key(client, token, permissions=["docs.write"])
    revoked = await create_key(client, token, permissions=["docs.read"])
    await revoke(client, token, revoked["id"])
    async with product(app) as user_agent:

        async def call(key: str) -> httpx.Response:
            return await user_agent.get("/docs-list", headers={"X-API-Key": key})

        refused(await call(writer["key"]), 403, "insufficient_permissions")
        refused(await call(new_key("ak")), 401, "invalid_api_key")
        refused(await call("not-a-key"), 401, "invalid_api_key")
        refused(await call(revoked["key"]), 401, "api_key_disabled")


async def test_rate_limited_is_429_with_retry_after(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    _, _, token = await new_user(client)
    key = await create_key(
        client,
        token,
        permissions=["docs.read"],
        rate_limits=[{"name": "per-minute", "limit": 2, "window_seconds": 60}],
    )
    async with product(app) as user_agent:
        answers = [
            await user_agent.get("/docs-list", headers={"X-API-Key": key["key"]}) for _ in range(3)
        ]
    assert [r.status_code for r in answers] == [200, 200, 429]
    refused(answers[2], 429, "rate_limited")
    assert 1 <= int(answers[2].headers["Retry-After"]) <= 60


async def test_used_up_credits_are_429_usage_exceeded(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    _, _, token = await new_user(client)
    key = await create_key(client, token, permissions=["docs.read"], credits=1)
    async with product(app) as user_agent:
        first = await user_agent.get("/docs-list", headers={"X-API-Key": key["key"]})
        second = await user_agent.get("/docs-list", headers={"X-API-Key": key["key"]})
    assert first.status_code == 200
    refused(second, 429, "usage_exceeded")
    assert "Retry-After" not in second.headers


async def test_authkeep_unreachable_is_503_never_a_pass(app: FastAPI, closed_port: int) -> None:
    key = new_key("ak")
    async with product(app, authkeep_url=f"http://127.0.0.1:{closed_port}") as user_agent:
        response = await user_agent.get("/docs-list", headers={"X-API-Key": key})
        session = await user_agent.get("/me", headers={"Authorization": "Bearer some-token"})
    for answer in (response, session):
        refused(answer, 503, "authkeep_unavailable")
        assert int(answer.headers["Retry-After"]) >= 1
    assert key not in response.text


async def test_without_the_handlers_status_and_headers_are_still_right(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    async with product(app, handlers=False) as user_agent:
        response = await user_agent.get("/docs-list")
    assert response.status_code == 401
    assert response.json() == {
        "detail": {"error": "missing_api_key", "detail": "Send an API key in the X-API-Key header."}
    }


async def test_a_session_by_bearer_or_cookie_reaches_the_route(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    email, _, token = await new_user(client)
    csrf = {"X-CSRF-Token": await csrf_token_of(client, token)}
    async with product(app) as user_agent:
        by_bearer = await user_agent.get("/me", headers={"Authorization": f"Bearer {token}"})
        bearer_post = await user_agent.post("/me/notes", headers=bearer(token))  # no token needed
        user_agent.cookies.set(PLAIN_NAME, token)
        by_cookie = await user_agent.get("/me")
        same_site_post = await user_agent.post(
            "/me/notes", headers={"Sec-Fetch-Site": "same-origin", **csrf}
        )
        same_origin_post = await user_agent.post(
            "/me/notes", headers={"Origin": PRODUCT_URL, **csrf}
        )
    for response in (by_bearer, bearer_post, by_cookie, same_site_post, same_origin_post):
        assert response.status_code == 200, response.text
        assert response.json() == {"email": email}


async def csrf_token_of(client: httpx.AsyncClient, token: str) -> str:
    """The session's `csrf_token`, as the browser's script reads it from authkeep."""
    response = await client.get("/api/auth/session", headers=bearer(token))
    return str(response.json()["csrf_token"])


async def test_a_cookie_post_needs_the_sessions_csrf_token(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """CHK-CK-02 in the product app: a same-site cookie POST without `X-CSRF-Token`, or with
    another session's token or a made-up one, is refused; the session's own token passes."""
    email, password, token = await new_user(client)
    client.cookies.clear()
    other = (await sign_in(client, email, password)).json()["token"]
    client.cookies.clear()
    mine, theirs = await csrf_token_of(client, token), await csrf_token_of(client, other)
    same_origin = {"Sec-Fetch-Site": "same-origin"}
    async with product(app) as user_agent:
        user_agent.cookies.set(PLAIN_NAME, token)
        missing = await user_agent.post("/me/notes", headers=same_origin)
        foreign = await user_agent.post(
            "/me/notes", headers={**same_origin, "X-CSRF-Token": theirs}
        )
        made_up = await user_agent.post(
            "/me/notes", headers={**same_origin, "X-CSRF-Token": "0" * 64}
        )
        right = await user_agent.post("/me/notes", headers={**same_origin, "X-CSRF-Token": mine})
    refused(missing, 403, "csrf_rejected")
    assert "X-CSRF-Token" in missing.json()["detail"]
    refused(foreign, 403, "csrf_rejected")
    refused(made_up, 403, "csrf_rejected")
    assert (right.status_code, right.json()) == (200, {"email": email})


@pytest.mark.parametrize(
    "headers",
    [
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site", "Origin": "http://evil.product.test"},
        {"Origin": "http://evil.test"},
        {},
    ],
)
async def test_a_cross_site_cookie_post_is_refused(
    app: FastAPI, client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    """CHK-CK-02 in the product app: the cookie never authorises an unsafe request from
    another site, even with the session's CSRF token."""
    _, _, token = await new_user(client)
    csrf = {"X-CSRF-Token": await csrf_token_of(client, token)}
    async with product(app) as user_agent:
        user_agent.cookies.set(PLAIN_NAME, token)
        for sent in (headers, {**headers, **csrf}):
            refused(await user_agent.post("/me/notes", headers=sent), 403, "csrf_rejected")


async def test_no_or_an_ended_session_is_401(app: FastAPI, client: httpx.AsyncClient) -> None:
    async with product(app) as user_agent:
        refused(await user_agent.get("/me"), 401, "unauthorized")
        ended = await user_agent.get("/me", headers={"Authorization": "Bearer not-a-session"})
        refused(ended, 401, "unauthorized")


async def test_a_plain_starlette_app_uses_the_same_functions(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    _, _, token = await new_user(client)
    key = await create_key(client, token, permissions=["docs.read"])
    async with client_for(app, base_url=AUTHKEEP_URL) as to_authkeep:
        authkeep = AuthkeepClient(AUTHKEEP_URL, http_client=to_authkeep, cache_ttl=0)

        async def docs_list(request: Request) -> JSONResponse:
            result = await verified_api_key(request, authkeep, permissions="docs.read")
            return JSONResponse({"owner": result.owner})

        starlette = Starlette(
            routes=[Route("/docs-list", docs_list)], exception_handlers=exception_handlers
        )
        transport = httpx.ASGITransport(app=starlette)
        async with authkeep, httpx.AsyncClient(transport=transport, base_url=PRODUCT_URL) as ua:
            ok = await ua.get("/docs-list", headers={"X-API-Key": key["key"]})
            missing = await ua.get("/docs-list")
    assert (ok.status_code, ok.json()) == (200, {"owner": key["owner"]})
    refused(missing, 401, "missing_api_key")
