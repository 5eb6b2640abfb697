"""Browser security headers on every answer authkeep gives (CHK-CK-04) and CORS for the
origins in `TRUSTED_ORIGINS` (CHK-CK-05), so a deployment without a proxy in front gets them.

Every answer carries, unless the route set that header itself (the HTML pages set a nonce CSP
of their own, the JWKS a public `Cache-Control`):

- `X-Content-Type-Options: nosniff` and `Referrer-Policy: no-referrer`;
- `Content-Security-Policy`: `API_POLICY` (nothing may load, frame or run), except on the API
  docs pages, which load Swagger UI or ReDoc from jsdelivr (`SWAGGER_POLICY`, `REDOC_POLICY`);
- `Cache-Control: no-store`: answers are per caller, and many carry secrets or session data;
- `Strict-Transport-Security` when the request counts as HTTPS (`sessions.cookies.is_https`,
  handed in by the app so this module imports no domain);
- `charset=utf-8` on `application/json`: JSON is always UTF-8 (RFC 8259), so the parameter
  changes nothing for a JSON parser and tells every other reader the encoding.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from starlette.applications import Starlette
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HSTS = "max-age=31536000; includeSubDomains"
API_POLICY = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
# Swagger UI: its bundle and stylesheet from jsdelivr, started by one inline script.
SWAGGER_POLICY = (
    "default-src 'none'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "style-src 'self' https://cdn.jsdelivr.net; img-src 'self' data: https://fastapi.tiangolo.com; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
# ReDoc: its bundle from jsdelivr, inline styles (styled-components), Google Fonts, and its
# search index in a worker started from a blob: URL.
REDOC_POLICY = (
    "default-src 'none'; script-src 'self' https://cdn.jsdelivr.net; "
    "style-src 'self' 'unsafe-inline' https://fonts.googleapis.com; "
    "font-src https://fonts.gstatic.com; img-src 'self' data: https://fastapi.tiangolo.com; "
    "worker-src blob:; connect-src 'self'; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'self'"
)
SWAGGER_PATHS = ("/docs", "/docs/")
REDOC_PATH = "/redoc"
JSON_TYPE = b"application/json"
JSON_UTF8 = b"application/json; charset=utf-8"
# Added to every answer that lacks them, with the CSP below (names lower case, as ASGI sends).
ALWAYS = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
)
HSTS_HEADER = (b"strict-transport-security", HSTS.encode())
CSP_NAME = b"content-security-policy"

# CORS: what a page on a trusted origin may send and read.
CORS_METHODS = ("GET", "POST", "PATCH", "DELETE")
CORS_EXPOSED = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset", "Retry-After")
NEVER_TRUSTED = {"*", "null"}


def content_security_policy(path: str) -> str:
    """The policy for an answer at `path`: the docs pages' own, else `API_POLICY`."""
    if path == SWAGGER_PATHS[0] or path.startswith(SWAGGER_PATHS[1]):
        return SWAGGER_POLICY
    if path == REDOC_PATH:
        return REDOC_POLICY
    return API_POLICY


def with_defaults(
    headers: list[tuple[bytes, bytes]], defaults: list[tuple[bytes, bytes]]
) -> list[tuple[bytes, bytes]]:
    """`headers` plus each default whose name is not there yet, JSON labelled UTF-8."""
    present: set[bytes] = set()
    result: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        lowered = name.lower()
        present.add(lowered)
        if lowered == b"content-type" and value.lower() == JSON_TYPE:
            value = JSON_UTF8
        result.append((name, value))
    result += [(name, value) for name, value in defaults if name not in present]
    return result


class SecurityHeadersMiddleware:
    """Adds the module's headers to every HTTP answer that did not set them. Pure ASGI on raw
    header bytes, so the body streams through untouched; add it last, so it wraps every other
    layer's answers (errors, limits, CORS)."""

    def __init__(self, app: ASGIApp, *, is_https: Callable[[Request], bool]) -> None:
        self.app = app
        self.is_https = is_https

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        defaults = [*ALWAYS, (CSP_NAME, content_security_policy(scope["path"]).encode())]
        if self.is_https(Request(scope)):
            defaults.append(HSTS_HEADER)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = with_defaults(list(message.get("headers", ())), defaults)
            await send(message)

        await self.app(scope, receive, send_with_headers)


def add_cors(
    app: Starlette, trusted_origins: Collection[str], allow_headers: Collection[str]
) -> None:
    """Let pages on `trusted_origins` call authkeep with the user's cookie and read the answers.

    The allowlist is exact: an `Origin` is echoed only when it is listed, and `*` or `null` in
    the list are ignored (never "any origin" with credentials). With no trusted origins there
    is no CORS layer at all, so no answer carries `Access-Control-Allow-Origin`.
    """
    origins = [origin for origin in trusted_origins if origin not in NEVER_TRUSTED]
    if not origins:
        return
    app.add_middleware(
        CORSMiddleware,
        allow_origins=origins,
        allow_methods=CORS_METHODS,
        allow_headers=list(allow_headers),
        allow_credentials=True,
        expose_headers=CORS_EXPOSED,
    )
