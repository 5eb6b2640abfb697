"""The session cookie (CHK-CK-01) and the same-site rule for requests a browser may send
(CHK-CK-02, CHK-CK-03).

Over HTTPS the cookie is `__Host-authkeep_session`: Secure, HttpOnly, Path=/, no Domain,
SameSite=Lax. Plain HTTP (local development only) cannot carry `__Host-` or `Secure` cookies, so
there it is `authkeep_session` with the same other attributes.

`other_site` is the one Fetch-Metadata rule (with `Origin` as the fallback), used by the server
(`cross_site`) and by `authkeep.client`; cookie requests also need the session's CSRF token
(`sessions.csrf`). This module stays light: the client imports it.
"""

from __future__ import annotations

from collections.abc import Collection

from starlette.requests import Request
from starlette.responses import Response

from authkeep.config import Settings

SECURE_NAME = "__Host-authkeep_session"
PLAIN_NAME = "authkeep_session"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
CSRF_HEADER = "X-CSRF-Token"


def is_https(request: Request, settings: Settings) -> bool:
    if settings.public_url:
        return settings.public_url.startswith("https://")
    # The scope's scheme is what `request.url.scheme` reports, without building the URL
    # (this runs on every response, for HSTS).
    return bool(request.scope.get("scheme", "http") == "https")


def cookie_name(request: Request, settings: Settings) -> str:
    return SECURE_NAME if is_https(request, settings) else PLAIN_NAME


def read_cookie(request: Request) -> str | None:
    return request.cookies.get(SECURE_NAME) or request.cookies.get(PLAIN_NAME)


def set_session_cookie(
    response: Response, request: Request, settings: Settings, token: str
) -> None:
    secure = is_https(request, settings)
    response.set_cookie(
        cookie_name(request, settings),
        token,
        max_age=settings.session_absolute_hours * 3600,
        path="/",
        secure=secure,
        httponly=True,
        samesite="lax",
    )


def clear_session_cookie(response: Response, request: Request, settings: Settings) -> None:
    secure = is_https(request, settings)
    response.delete_cookie(
        cookie_name(request, settings), path="/", secure=secure, httponly=True, samesite="lax"
    )
    response.headers["Clear-Site-Data"] = '"cookies"'


def own_origin(request: Request, settings: Settings) -> str:
    """This service's own origin: from AUTHKEEP_PUBLIC_URL, else the request's Host header."""
    if settings.public_url:
        return settings.public_url.rstrip("/")
    return f"{request.url.scheme}://{request.url.netloc}"


def other_site(
    request: Request,
    own: str,
    trusted_origins: Collection[str],
    *,
    allow_headerless: bool = False,
) -> bool:
    """True when an unsafe request may come from another site than `own` (an origin such as
    `https://app.example.com`) and the `trusted_origins`.

    Browsers send `Sec-Fetch-Site`: `same-origin` and `none` (typed by the user) pass, and
    `same-site` passes with an `Origin` in `trusted_origins`. Without it, `Origin` must be
    `own` or trusted. A request with neither header is refused, since every browser that sends
    cookies sends one of them, unless `allow_headerless` (routes used without a session: such
    a client is not a browser). The one rule for the server and for `authkeep.client`.
    """
    if request.method in SAFE_METHODS:
        return False
    origin = request.headers.get("origin")
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None:
        if fetch_site in {"same-origin", "none"}:
            return False
        return not (fetch_site == "same-site" and origin in trusted_origins)
    if origin is None:
        return not allow_headerless
    return origin != own and origin not in trusted_origins


def cross_site(request: Request, settings: Settings, *, allow_headerless: bool = False) -> bool:
    """`other_site` for this service's own origin and `TRUSTED_ORIGINS`."""
    return other_site(
        request,
        own_origin(request, settings),
        settings.trusted_origins,
        allow_headerless=allow_headerless,
    )
