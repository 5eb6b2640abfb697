"""CORS for the origins in TRUSTED_ORIGINS, and for no one else (CHK-CK-05).

A page on a listed origin may call authkeep with the user's cookie and read the answer: its
exact origin is echoed with `Access-Control-Allow-Credentials: true`. Any other `Origin`, in
a preflight or a plain request, gets no `Access-Control-Allow-Origin`. CORS headers do not
depend on the database engine, so these tests run on SQLite only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
from fastapi import FastAPI

from authkeep.config import Settings
from support.secrets_scan import FIGURES
from users.identity_helpers import client_for, new_user, started_app

MakeSettings = Callable[..., Settings]
TRUSTED = "https://trusted.example"
OTHER_TRUSTED = "https://app.trusted.example:8443"
SESSION = "/api/auth/session"

# 50 origins that must not be echoed: look-alikes of TRUSTED (scheme, port, case, suffix,
# prefix, userinfo, encodings, trailing characters), other schemes, IP literals, `null`, `*`.
UNLISTED = [
    "null",
    "*",
    "",
    "https://evil.example",
    "http://evil.example",
    "https://trusted.example.evil.com",
    "https://trusted.example.com",
    "https://eviltrusted.example",
    "https://trusted.examplex",
    "https://xtrusted.example",
    "https://sub.trusted.example",
    "https://app.trusted.example",  # the other trusted origin without its port
    "https://app.trusted.example:443",
    "http://app.trusted.example:8443",
    "http://trusted.example",
    "ws://trusted.example",
    "wss://trusted.example",
    "ftp://trusted.example",
    "file://trusted.example",
    "https://trusted.example:443",
    "https://trusted.example:8443",
    "https://trusted.example:80",
    "https://trusted.example:0",
    "HTTPS://TRUSTED.EXAMPLE",
    "https://TRUSTED.example",
    "https://Trusted.Example",
    "https://trusted.example/",
    "https://trusted.example/path",
    "https://trusted.example.",
    "https://trusted.example?x=1",
    "https://trusted.example#x",
    "https://trusted.example@evil.example",
    "https://evil.example@trusted.example",
    "https://evil.example#@trusted.example",
    "https://trusted%2Eexample",
    "https://trusted.example%00",
    "https://trusted.exampIe",
    "https://xn--trusted-example",
    "//trusted.example",
    "trusted.example",
    "https://trusted.example https://evil.example",
    "https://trusted.example, https://evil.example",
    "https://127.0.0.1",
    "https://2130706433",
    "https://0x7f000001",
    "https://[::1]",
    "javascript:alert(1)",
    "data:text/html,x",
    "about:blank",
    "chrome-extension://abcdefghijklmnop",
]


@pytest.fixture
async def cors_app(migrated_url: str, make_settings: MakeSettings) -> AsyncIterator[FastAPI]:
    async with started_app(
        make_settings, migrated_url, trusted_origins=[TRUSTED, OTHER_TRUSTED]
    ) as app:
        yield app


def preflight_headers(origin: str, method: str = "POST") -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "content-type, x-csrf-token",
    }


@pytest.mark.parametrize("migrated_url", ["sqlite"], indirect=True)
async def test_a_trusted_origin_may_call_with_the_cookie_and_read_the_answer(
    cors_app: FastAPI,
) -> None:
    """Preflight from a listed origin: that origin, credentials, the CSRF header and the
    app's methods allowed. A signed-in request from it: the session is readable, with exactly
    that origin echoed and `Vary: Origin`."""
    async with client_for(cors_app) as client:
        await new_user(client)
        for origin in (TRUSTED, OTHER_TRUSTED):
            preflight = await client.options(SESSION, headers=preflight_headers(origin))
            assert preflight.status_code == 200
            assert preflight.headers["access-control-allow-origin"] == origin
            assert preflight.headers["access-control-allow-credentials"] == "true"
            allowed = preflight.headers["access-control-allow-headers"].lower().split(", ")
            assert {"x-csrf-token", "content-type"} <= set(allowed)
            methods = set(preflight.headers["access-control-allow-methods"].split(", "))
            assert {"GET", "POST", "PATCH", "DELETE"} <= methods
            answer = await client.get(SESSION, headers={"Origin": origin})
            assert answer.status_code == 200
            assert "user" in answer.json()
            assert answer.headers.get_list("access-control-allow-origin") == [origin]
            assert answer.headers["access-control-allow-credentials"] == "true"
            assert "Origin" in answer.headers["vary"]
            assert "ratelimit-remaining" in answer.headers["access-control-expose-headers"].lower()
            # Errors are readable too, so the page can show why it was refused.
            anonymous = await client.get(SESSION, headers={"Origin": origin, "Cookie": ""})
            assert anonymous.status_code == 401
            assert anonymous.headers["access-control-allow-origin"] == origin


@pytest.mark.parametrize("migrated_url", ["sqlite"], indirect=True)
async def test_no_other_origin_is_ever_echoed(cors_app: FastAPI) -> None:
    """50 unlisted origins (look-alikes of a trusted one, `null`, `*`, other schemes, IP
    literals), each as a preflight, a GET and a POST: 0 answers carry
    Access-Control-Allow-Origin; the refused preflight is a 400."""
    assert len(UNLISTED) == len(set(UNLISTED)) == 50
    reflections: list[tuple[str, str, str]] = []
    async with client_for(cors_app) as client:
        for origin in UNLISTED:
            preflight = await client.options(SESSION, headers=preflight_headers(origin))
            assert preflight.status_code == 400, origin
            answers = [
                ("preflight", preflight),
                ("GET", await client.get(SESSION, headers={"Origin": origin})),
                (
                    "POST",
                    await client.post("/api/auth/sign-in", json={}, headers={"Origin": origin}),
                ),
            ]
            reflections += [
                (origin, kind, answer.headers["access-control-allow-origin"])
                for kind, answer in answers
                if "access-control-allow-origin" in answer.headers
            ]
    assert reflections == []
    FIGURES.append(
        f"CHK-CK-05 CORS: {len(UNLISTED)} unlisted origins x 3 requests, "
        f"{len(reflections)} reflections"
    )


@pytest.mark.parametrize("migrated_url", ["sqlite"], indirect=True)
async def test_without_trusted_origins_there_is_no_cors_at_all(
    migrated_url: str, make_settings: MakeSettings
) -> None:
    """The default (no TRUSTED_ORIGINS), and a list holding only `*` and `null` (which are not
    origins one can trust): no answer allows any origin, and a preflight is just a 405."""
    for trusted in ([], ["*", "null"]):
        async with (
            started_app(make_settings, migrated_url, trusted_origins=trusted) as app,
            client_for(app) as client,
        ):
            for origin in ("https://evil.example", "null", TRUSTED):
                preflight = await client.options(SESSION, headers=preflight_headers(origin))
                assert preflight.status_code == 405
                plain = await client.get(SESSION, headers={"Origin": origin})
                for answer in (preflight, plain):
                    assert not any(name.startswith("access-control-") for name in answer.headers), (
                        trusted,
                        origin,
                    )
