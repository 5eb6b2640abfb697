"""No redirect authkeep answers can point off-site (CHK-CK-06, BI-05).

authkeep builds no redirect itself, and the app turns off Starlette's trailing-slash redirect,
whose `Location` was built from the request's `Host` header (`/api/auth/session/` with
`Host: evil.example` answered 307 to `http://evil.example/api/auth/session`). A trailing-slash
spelling is now a 404, like any other unknown path (BI-06 allows "same bucket or 404").

The BI-05 corpus is sent the three ways a redirect target can reach a server (the path, the
query, the host headers) to a sample of routes, with and without a trailing slash, as raw ASGI
requests so no client cleans a path up first. Redirects do not depend on the database engine,
so these tests run on SQLite only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from urllib.parse import quote

import pytest
from fastapi import FastAPI

from authkeep.config import Settings
from support.asgi import RawAnswer, raw_request
from support.secrets_scan import FIGURES
from users.identity_helpers import started_app

MakeSettings = Callable[..., Settings]
EVIL = "evil.example"
ALLOWED = "auth.example.test"

# (method, path): a route of each kind: JSON API (anonymous, signed-in, sign-in), health,
# docs, the HTML pages, keys.
SAMPLE_ROUTES = [
    ("GET", "/api/auth/session"),
    ("POST", "/api/auth/sign-in"),
    ("GET", "/api/keys"),
    ("GET", "/api/version"),
    ("GET", "/health"),
    ("GET", "/api/health/db"),
    ("GET", "/.well-known/jwks.json"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/docs/oauth2-redirect"),
    ("GET", "/redoc"),
    ("GET", "/reset-password"),
    ("GET", "/verify-email"),
    ("GET", "/admin/setup"),
]

# BI-05, as redirect targets (raw, as an attacker would put them in a URL).
TARGETS = [
    f"//{EVIL}",
    f"/\\{EVIL}",
    f"\\\\{EVIL}",
    f"https:{EVIL}",
    f"%2F%2F{EVIL}",
    f"%09//{EVIL}",
    f"https://{ALLOWED}@{EVIL}",
    f"https://{ALLOWED}.{EVIL}",
    "http://3232235777",
    "http://0xC0A80101",
    "http://[::ffff:c0a8:101]",
    "https://evil\uff0eexample",
    "javascript:alert(1)",
    "data:text/html,<script>alert(1)</script>",
    f"%0d%0aLocation:%20https://{EVIL}",
    f"/%0d%0aSet-Cookie:%20x=1%0d%0aLocation:%20//{EVIL}",
    f"https://{ALLOWED}/docss",
    f"https://{ALLOWED}/docs/../..//{EVIL}",
]

HOST_HEADERS: list[dict[str, str]] = [
    {},
    {"Host": EVIL},
    {"Host": f"{EVIL}:443"},
    {"Host": f"{ALLOWED}@{EVIL}"},
    {"X-Forwarded-Host": EVIL},
    {"X-Forwarded-Host": EVIL, "X-Forwarded-Proto": "https"},
    {"X-Forwarded-Proto": "javascript"},
    {"Forwarded": f"host={EVIL};proto=https"},
    {"X-Original-URL": f"//{EVIL}/", "X-Rewrite-URL": f"//{EVIL}/"},
    {"X-Forwarded-Prefix": f"//{EVIL}"},
]
REDIRECT_PARAMETERS = ("next", "redirect", "redirect_uri", "return_to", "url", "continue")


def path_variants(path: str) -> list[str]:
    """The route, with a trailing slash, and with each target in front and behind it."""
    variants = [path, f"{path}/"]
    for target in TARGETS:
        raw = target if target.startswith(("/", "%")) else quote(target, safe="/:@%\\")
        lead = raw if raw.startswith("/") else f"/{raw}"
        variants += [f"{lead}{path}", f"{lead}{path}/", f"{path}/{raw.lstrip('/')}"]
    return variants


@pytest.fixture
async def sqlite_app(migrated_url: str, make_settings: MakeSettings) -> AsyncIterator[FastAPI]:
    async with started_app(make_settings, migrated_url) as app:
        yield app


@pytest.mark.parametrize("migrated_url", ["sqlite"], indirect=True)
async def test_a_trailing_slash_is_not_redirected_to_the_host_header_BI_05(
    sqlite_app: FastAPI,
) -> None:
    """`/api/auth/session/` with `Host: evil.example` used to answer 307 to
    `http://evil.example/api/auth/session`; now it is a 404 with no Location, and the route
    itself still answers."""
    answer = await raw_request(sqlite_app, "GET", "/api/auth/session/", {"Host": EVIL})
    assert (answer.status, answer.all("location")) == (404, [])
    assert (await raw_request(sqlite_app, "GET", "/api/auth/session", {"Host": EVIL})).status == 401


@pytest.mark.parametrize("migrated_url", ["sqlite"], indirect=True)
async def test_the_open_redirect_corpus_gets_no_location_anywhere_CHK_CK_06(
    sqlite_app: FastAPI,
) -> None:
    """The BI-05 corpus in the path (alone, before and after each sample route, with and
    without a trailing slash), in redirect-style query parameters, and in Host /
    X-Forwarded-Host / Forwarded headers: 0 answers carry a Location header, so 0 point off
    the allowlist; none is a 3xx or a 5xx."""
    answers: list[tuple[str, RawAnswer]] = []
    for method, path in SAMPLE_ROUTES:
        for variant in path_variants(path):
            answers.append((f"{method} {variant}", await raw_request(sqlite_app, method, variant)))
        for headers in HOST_HEADERS:
            for spelling in (path, f"{path}/"):
                answer = await raw_request(sqlite_app, method, spelling, headers)
                answers.append((f"{method} {spelling} {headers}", answer))
        for target in TARGETS:
            query = "&".join(f"{name}={quote(target, safe='')}" for name in REDIRECT_PARAMETERS)
            answer = await raw_request(sqlite_app, method, path, query=query)
            answers.append((f"{method} {path}?{query}", answer))
    for target in TARGETS:  # the target as the whole path
        raw = target if target.startswith("/") else f"/{target}"
        answers.append((f"GET {raw}", await raw_request(sqlite_app, "GET", raw)))
    with_location = [(request, a.all("location")) for request, a in answers if a.all("location")]
    unexpected = [(request, a.status) for request, a in answers if not 200 <= a.status < 300]
    unexpected = [
        (request, status) for request, status in unexpected if status not in (401, 404, 405, 422)
    ]
    assert with_location == []
    assert unexpected == []
    FIGURES.append(
        f"CHK-CK-06 / BI-05 open redirects: {len(TARGETS)} targets, {len(SAMPLE_ROUTES)} routes, "
        f"{len(answers)} requests, {len(with_location)} Location headers "
        f"({len(with_location)} off the allowlist)"
    )
