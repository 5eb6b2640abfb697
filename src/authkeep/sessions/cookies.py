"""The session cookie (CHK-CK-01) and the CSRF rule for cookie-authenticated requests (CHK-CK-02).

Over HTTPS the cookie is `__Host-authkeep_session`: Secure, HttpOnly, Path=/, no Domain,
SameSite=Lax. Plain HTTP (local development only) cannot carry `__Host-` or `Secure` cookies, so
there it is `authkeep_session` with the same other attributes.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from authkeep.config import Settings

SECURE_NAME = "__Host-authkeep_session"
PLAIN_NAME = "authkeep_session"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


def is_https(request: Request, settings: Settings) -> bool:
    if settings.public_url:
        return settings.public_url.startswith("https://")
    return request.url.scheme == "https"


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


def cross_site(request: Request, settings: Settings) -> bool:
    """True when an unsafe cookie-authenticated request may come from another site.

    Browsers send `Sec-Fetch-Site`; `same-origin` and `none` (typed by the user) pass. Without
    it, `Origin` must be this service or one of TRUSTED_ORIGINS. With neither header the
    request is refused: every browser that sends cookies sends one of them.
    """
    if request.method in SAFE_METHODS:
        return False
    allowed = {own_origin(request, settings), *settings.trusted_origins}
    origin = request.headers.get("origin")
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None:
        if fetch_site in {"same-origin", "none"}:
            return False
        return not (fetch_site == "same-site" and origin in settings.trusted_origins)
    return origin is None or origin not in allowed
