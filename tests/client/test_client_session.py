"""`AuthkeepClient.session` against the real app (both engines): who is signed in, None for a
session that is not valid, sign-out seen within the cache TTL."""

from __future__ import annotations

import httpx
from client_helpers import authkeep_client
from fastapi import FastAPI

from authkeep.client import AuthkeepClient
from users.identity_helpers import bearer, new_user


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def sign_out(client: httpx.AsyncClient, token: str) -> None:
    response = await client.post("/api/auth/sign-out", headers=bearer(token))
    assert response.status_code == 204, response.text


async def test_a_valid_session_answers_who_is_signed_in(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    email, _, token = await new_user(client)
    async with authkeep_client(app) as authkeep:
        info = await authkeep.session(token)
        again = await authkeep.session(f"  {token}  ")
    assert info is not None
    assert again == info
    assert (info.user.email, info.user.role, info.session.current) == (email, "user", True)
    assert info.session.expires_at > info.session.created_at


async def test_an_unknown_or_malformed_token_is_no_session(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    async with authkeep_client(app) as authkeep:
        for token in ["", "   ", "not-a-session", "x" * 5000, "two words", "bad\nline", "é"]:
            assert await authkeep.session(token) is None


async def test_malformed_tokens_never_reach_authkeep(closed_port: int) -> None:
    async with AuthkeepClient(f"http://127.0.0.1:{closed_port}") as authkeep:
        for token in ["", "two words", "bad\r\nX-Injected: 1", "é", "x" * 5000]:
            assert await authkeep.session(token) is None


async def test_sign_out_is_seen_once_the_cache_ttl_has_passed(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    _, _, token = await new_user(client)
    async with authkeep_client(app, cache_ttl=30) as authkeep:
        clock = Clock()
        authkeep.session_cache.clock = clock
        assert await authkeep.session(token) is not None
        await sign_out(client, token)
        assert await authkeep.session(token) is not None  # cached: within the bound
        clock.now += 30
        assert await authkeep.session(token) is None


async def test_with_cache_ttl_zero_sign_out_is_seen_at_once(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    _, _, token = await new_user(client)
    async with authkeep_client(app, cache_ttl=0) as authkeep:
        assert await authkeep.session(token) is not None
        await sign_out(client, token)
        assert await authkeep.session(token) is None
