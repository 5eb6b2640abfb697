"""FastAPI/Starlette dependencies that protect a route with an authkeep API key or session.

    authkeep = AuthkeepClient(os.environ["AUTHKEEP_URL"])
    app = FastAPI(lifespan=authkeep.lifespan, exception_handlers=exception_handlers)
    Reader = Annotated[VerifyResult, Depends(require_api_key(authkeep, "reports.read"))]

Refusals are `AuthkeepDenied` (an `HTTPException`): the status and headers are right on their
own; `exception_handlers` renders the body as authkeep's `{"error": code, "detail": text}`.
Plain Starlette apps call `verified_api_key` / `signed_in_session` from their endpoints and pass
the same `exception_handlers` to `Starlette(...)`.
"""

from __future__ import annotations

import hmac
import math
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from typing import Any

from fastapi import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from authkeep.client.client import AuthkeepClient
from authkeep.client.errors import AuthkeepUnavailable
from authkeep.client.schemas import SessionInfo
from authkeep.keys.schemas import Outcome, RateLimitRequest, VerifyResult
from authkeep.sessions.cookies import CSRF_HEADER, SAFE_METHODS, other_site, read_cookie

UNAVAILABLE_RETRY_AFTER_SECONDS = 5

# Outcome → (status, error code, detail). VALID never gets here.
DENIALS: dict[Outcome, tuple[int, str, str]] = {
    Outcome.NOT_FOUND: (401, "invalid_api_key", "The API key is not valid."),
    Outcome.DISABLED: (401, "api_key_disabled", "This API key has been revoked or disabled."),
    Outcome.EXPIRED: (401, "api_key_expired", "This API key has expired."),
    Outcome.FORBIDDEN: (403, "forbidden", "This API key's account may not use this."),
    Outcome.INSUFFICIENT_PERMISSIONS: (
        403,
        "insufficient_permissions",
        "This API key does not have the permissions this needs.",
    ),
    Outcome.RATE_LIMITED: (
        429,
        "rate_limited",
        "Too many requests with this API key. Retry after the seconds in Retry-After.",
    ),
    Outcome.USAGE_EXCEEDED: (
        429,
        "usage_exceeded",
        "This API key has used up its credits or its plan's quota.",
    ),
}


class AuthkeepDenied(HTTPException):
    """A request refused by a dependency: `status_code`, `error` (stable code), `message`."""

    def __init__(
        self, status_code: int, error: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        headers = {"Cache-Control": "no-store", **(headers or {})}
        super().__init__(status_code, {"error": error, "detail": message}, headers)
        self.error = error
        self.message = message


async def render_denied(request: Request, exc: Exception) -> Response:
    """`{"error": code, "detail": text}` for an `AuthkeepDenied`."""
    assert isinstance(exc, AuthkeepDenied)
    return JSONResponse(
        {"error": exc.error, "detail": exc.message},
        status_code=exc.status_code,
        headers=exc.headers,
    )


ExceptionHandler = Callable[[Request, Any], Coroutine[Any, Any, Response]]
exception_handlers: dict[int | type[Exception], ExceptionHandler] = {AuthkeepDenied: render_denied}


def _bearer(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def api_key_from(request: Request) -> str | None:
    """The key from `X-API-Key`, else from `Authorization: Bearer`; never from the URL."""
    return request.headers.get("x-api-key", "").strip() or _bearer(request)


def _unavailable(exc: AuthkeepUnavailable) -> AuthkeepDenied:
    wait = exc.retry_after if exc.retry_after is not None else UNAVAILABLE_RETRY_AFTER_SECONDS
    return AuthkeepDenied(
        503,
        "authkeep_unavailable",
        "Authentication is unavailable right now. Try again shortly.",
        {"Retry-After": str(max(1, math.ceil(wait)))},
    )


def denial_for(result: VerifyResult) -> AuthkeepDenied:
    """The refusal for a verify answer that is not VALID."""
    status, error, message = DENIALS[result.code]
    headers: dict[str, str] = {}
    if result.code is Outcome.RATE_LIMITED:
        resets = [state.reset for state in result.ratelimits if state.exceeded]
        headers["Retry-After"] = str(max(1, math.ceil(max(resets, default=1))))
    return AuthkeepDenied(status, error, message, headers)


async def verified_api_key(
    request: Request,
    client: AuthkeepClient,
    *,
    permissions: str | None = None,
    cost: int = 1,
    ratelimits: Sequence[RateLimitRequest] | None = None,
    feature: str | None = None,
) -> VerifyResult:
    """The VALID verify answer for the request's API key, or `AuthkeepDenied`."""
    key = api_key_from(request)
    if key is None:
        raise AuthkeepDenied(401, "missing_api_key", "Send an API key in the X-API-Key header.")
    try:
        result = await client.verify_key(
            key, permissions=permissions, cost=cost, ratelimits=ratelimits, feature=feature
        )
    except AuthkeepUnavailable as exc:
        raise _unavailable(exc) from None
    if not result.valid:
        raise denial_for(result)
    return result


def require_api_key(
    client: AuthkeepClient,
    permissions: str | None = None,
    *,
    cost: int = 1,
    ratelimits: Sequence[RateLimitRequest] | None = None,
    feature: str | None = None,
) -> Callable[[Request], Awaitable[VerifyResult]]:
    """A dependency: the request's key must verify VALID for these permissions (an expression
    such as `"reports.read and reports.export"`); the route gets the `VerifyResult`."""

    async def api_key(request: Request) -> VerifyResult:
        return await verified_api_key(
            request,
            client,
            permissions=permissions,
            cost=cost,
            ratelimits=ratelimits,
            feature=feature,
        )

    return api_key


CROSS_SITE = "Cross-site request refused: it did not come from this site or a trusted origin."
MISSING_CSRF_TOKEN = (
    "This request signs in with the authkeep session cookie, so it must carry the session's "
    f"CSRF token in the {CSRF_HEADER} header: `csrf_token` from authkeep's sign-in answer or "
    "from its GET /api/auth/session."
)
WRONG_CSRF_TOKEN = (
    f"The {CSRF_HEADER} header does not belong to this session. Read `csrf_token` again from "
    "authkeep's GET /api/auth/session."
)


def _csrf_denied(detail: str) -> AuthkeepDenied:
    return AuthkeepDenied(403, "csrf_rejected", detail)


async def signed_in_session(
    request: Request, client: AuthkeepClient, *, trusted_origins: Iterable[str] = ()
) -> SessionInfo:
    """The session of the request's bearer token or authkeep session cookie, or
    `AuthkeepDenied` (401 without a valid session; 403 `csrf_rejected` for a cookie request
    that changes state and is cross-site or lacks the session's CSRF token).

    The CSRF checks are authkeep's own (`authkeep.sessions.csrf`), for this app's origin: the
    same-site rule, and `X-CSRF-Token` equal to the `csrf_token` of the session that
    authkeep's session check returned."""
    token = _bearer(request)
    presented: str | None = None
    if token is None:
        token = read_cookie(request)
        if token is not None and request.method not in SAFE_METHODS:
            own = f"{request.url.scheme}://{request.url.netloc}"
            if other_site(request, own, frozenset(trusted_origins)):
                raise _csrf_denied(CROSS_SITE)
            presented = request.headers.get(CSRF_HEADER)
            if not presented:
                raise _csrf_denied(MISSING_CSRF_TOKEN)
    if token is None:
        raise AuthkeepDenied(401, "unauthorized", "Sign in first: no session was sent.")
    try:
        info = await client.session(token)
    except AuthkeepUnavailable as exc:
        raise _unavailable(exc) from None
    if info is None:
        raise AuthkeepDenied(
            401, "unauthorized", "Your session has ended or is not valid. Sign in again."
        )
    if presented is not None and not hmac.compare_digest(
        presented.encode(), info.csrf_token.encode()
    ):
        raise _csrf_denied(WRONG_CSRF_TOKEN)
    return info


def require_session(
    client: AuthkeepClient, *, trusted_origins: Iterable[str] = ()
) -> Callable[[Request], Awaitable[SessionInfo]]:
    """A dependency: a signed-in authkeep session (bearer token or session cookie); the route
    gets the `SessionInfo`."""
    trusted = frozenset(trusted_origins)

    async def session(request: Request) -> SessionInfo:
        return await signed_in_session(request, client, trusted_origins=trusted)

    return session
