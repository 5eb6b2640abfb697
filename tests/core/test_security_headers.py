"""Browser security headers on every answer (CHK-CK-04), checked by `support.security_headers`.

The inventory is every route of the app (`app.routes`, flattened), called the way an anonymous
client would: each method with made-up ids and an empty JSON body, plus HEAD, a wrong method,
a trailing slash and unknown paths, so 2xx, 401, 403, 404, 405 and 422 answers are all
checked; the limit, error and catch-all layers have a test each. The headers do not depend on
the database engine, so these tests run on SQLite only.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from fastapi.routing import iter_route_contexts

from authkeep.app import create_app
from authkeep.config import Settings
from support.secrets_scan import FIGURES
from support.security_headers import csp_directives, header_faults
from users.identity_helpers import client_for, started_app

MakeSettings = Callable[..., Settings]
PARAMETER = re.compile(r"\{[^}]+\}")
JSON_POLICY = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"


@dataclass(frozen=True)
class Mode:
    """How the request reaches authkeep, and whether it counts as HTTPS (HSTS expected)."""

    name: str
    settings: dict[str, str]
    base_url: str
    https: bool


MODES = [
    Mode("plain HTTP", {}, "http://testserver", https=False),
    Mode(
        "public URL https", {"public_url": "https://auth.example.test"}, "http://testserver", True
    ),
    Mode("https request", {}, "https://testserver", https=True),
]


def inventory(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path) for every method of every route, ids filled with made-up UUIDs."""
    calls: list[tuple[str, str]] = []
    for route in iter_route_contexts(app.routes):
        path = PARAMETER.sub(str(uuid.uuid4()), route.path or "")
        calls += [(method, path) for method in sorted(route.methods or ())]
    return calls


CROSS_SITE = {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}


def probes(app: FastAPI) -> list[tuple[str, str, dict[str, str]]]:
    """The inventory plus, per route, HEAD, a method it does not serve, a trailing slash and
    a cross-site browser form (refused 403 where a form could sign someone in); unknown paths."""
    calls = inventory(app)
    extra: list[tuple[str, str]] = []
    for method, path in calls:
        extra += [("HEAD", path), ("PUT", path), (method, f"{path}/")]
    unknown = [("GET", "/no-such-page"), ("GET", "/api/no-such-route"), ("POST", "/api/x")]
    plain = [(method, path, {}) for method, path in calls + extra + unknown]
    return plain + [(method, path, CROSS_SITE) for method, path in calls if method == "POST"]


async def call(
    client: httpx.AsyncClient, method: str, path: str, headers: dict[str, str]
) -> httpx.Response:
    body = {} if method in {"POST", "PUT", "PATCH", "DELETE"} else None
    return await client.request(method, path, json=body, headers=headers)


def faults_of(path: str, response: httpx.Response, mode: Mode) -> list[str]:
    return header_faults(
        path, response.status_code, response.headers, response.content, https=mode.https
    )


@pytest.mark.parametrize("migrated_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("mode", MODES, ids=[mode.name for mode in MODES])
async def test_every_route_answers_with_the_security_headers_CHK_CK_04(
    migrated_url: str, make_settings: MakeSettings, mode: Mode
) -> None:
    """Every route, every method, anonymous: nosniff, no-referrer, a CSP with default-src,
    object-src, base-uri and frame-ancestors 'none', no-store (the JWKS excepted), a charset on
    every body, and HSTS exactly when the request counts as HTTPS (AUTHKEEP_PUBLIC_URL https,
    else the request's scheme). 0 missing headers."""
    async with started_app(make_settings, migrated_url, **mode.settings) as app:
        routes = inventory(app)
        calls = probes(app)
        missing: dict[str, list[str]] = {}
        statuses: set[int] = set()
        async with client_for(app, base_url=mode.base_url) as client:
            for method, path, headers in calls:
                response = await call(client, method, path, headers)
                statuses.add(response.status_code)
                if faults := faults_of(path, response, mode):
                    missing[f"{method} {path} -> {response.status_code}"] = faults
    assert missing == {}
    assert {200, 401, 403, 404, 405, 422} <= statuses
    assert len(routes) >= 60  # the inventory really is the app's routes, not an empty list
    FIGURES.append(
        f"CHK-CK-04 security headers ({mode.name}): {len(routes)} route methods, "
        f"{len(calls)} requests, statuses {sorted(statuses)}, "
        f"{sum(len(f) for f in missing.values())} missing headers"
    )


@pytest.mark.parametrize("migrated_url", ["sqlite"], indirect=True)
async def test_json_answers_get_the_strict_policy_and_html_pages_keep_their_own(
    client: httpx.AsyncClient,
) -> None:
    """A JSON answer gets the policy that allows nothing; the link pages keep their nonce
    policy (one nonce for script and style, nothing from elsewhere)."""
    for path in ("/api/auth/session", "/openapi.json", "/health", "/.well-known/jwks.json"):
        response = await client.get(path)
        assert response.headers["content-type"] == "application/json; charset=utf-8", path
        assert response.headers["content-security-policy"] == JSON_POLICY, path
    for path in ("/reset-password", "/verify-email", "/admin/setup"):
        response = await client.get(path)
        policy = csp_directives(response.headers["content-security-policy"])
        assert policy["script-src"].startswith("'nonce-"), path
        assert policy["style-src"] == policy["script-src"], path
        assert response.headers["content-type"] == "text/html; charset=utf-8", path


ASSET = re.compile(r"<(script|link)\b[^>]*?\b(?:src|href)=\"(https?://[^/\"]+)[^\"]*\"[^>]*>")


@pytest.mark.parametrize("migrated_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("path", ["/docs", "/redoc"])
async def test_the_api_docs_pages_may_load_what_they_use(
    client: httpx.AsyncClient, path: str
) -> None:
    """Swagger UI and ReDoc come from a CDN: every script, stylesheet and icon their page links
    is allowed by the page's policy (and an inline script or style needs 'unsafe-inline'),
    while framing, plugins and <base> stay refused."""
    response = await client.get(path)
    assert response.status_code == 200
    policy = csp_directives(response.headers["content-security-policy"])
    assets = ASSET.findall(response.text)
    assert assets, "the page links its assets from a CDN"
    for tag, origin in assets:
        directive = "script-src" if tag == "script" else "style-src"
        if tag == "link" and "fastapi.tiangolo.com" in origin:
            directive = "img-src"  # the favicon
        assert origin in policy[directive].split(), (tag, origin)
    if re.search(r"<script>", response.text):
        assert "'unsafe-inline'" in policy["script-src"].split()
    if "<style>" in response.text:
        assert "'unsafe-inline'" in policy["style-src"].split()
    assert policy["default-src"] == policy["frame-ancestors"] == policy["base-uri"] == "'none'"


def _failing_routes() -> APIRouter:
    router = APIRouter()

    @router.get("/api/test-headers/bug")
    async def bug() -> None:
        raise ValueError("a bug")

    return router


@pytest.fixture
async def failing_app(migrated_url: str, make_settings: MakeSettings) -> AsyncIterator[FastAPI]:
    application = create_app(make_settings(database_url=migrated_url, api_limit_per_ip=2))
    application.include_router(_failing_routes())
    async with application.router.lifespan_context(application):
        yield application


@pytest.mark.parametrize("migrated_url", ["sqlite"], indirect=True)
async def test_500_and_429_answers_carry_the_headers_too(failing_app: FastAPI) -> None:
    """The catch-all's 500 and the own-API limiter's 429 are answered outside the routes;
    they carry the same headers."""
    mode = MODES[0]
    async with client_for(failing_app, ip="203.0.113.40") as client:
        crashed = await client.get("/api/test-headers/bug")
        assert crashed.status_code == 500
        assert faults_of("/api/test-headers/bug", crashed, mode) == []
        statuses = [(await client.get("/api/auth/session")).status_code for _ in range(2)]
        assert statuses == [401, 429]
        refused = await client.get("/api/auth/session")
        assert refused.json()["error"] == "rate_limited"
        assert faults_of("/api/auth/session", refused, mode) == []


@pytest.mark.parametrize("migrated_url", ["sqlite"], indirect=True)
async def test_a_header_the_route_set_itself_is_kept(client: httpx.AsyncClient) -> None:
    """Defaults never overwrite: the JWKS stays cacheable for five minutes."""
    jwks = await client.get("/.well-known/jwks.json")
    assert jwks.headers.get_list("cache-control") == ["public, max-age=300"]
    page = await client.get("/reset-password")
    assert len(page.headers.get_list("content-security-policy")) == 1
