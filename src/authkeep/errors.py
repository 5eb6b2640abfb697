"""The error tree: every error has a stable `code`, an HTTP status and a human `detail`.

One handler (`install_error_handlers`) renders all of them — and every framework or database
error — as `{"error": code, "detail": text}`. Nothing it renders carries a stack trace, SQL, a
driver name or a secret.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger("authkeep.errors")

RETRY_AFTER_SECONDS = 5


class AuthkeepError(Exception):
    """Base of every domain error. Subclasses set `code`, `status_code` and a default `detail`."""

    code = "internal_error"
    status_code = 500
    detail = "Something went wrong on our side."
    headers: dict[str, str] = {}

    def __init__(self, detail: str | None = None, *, headers: dict[str, str] | None = None):
        if detail is not None:
            self.detail = detail
        if headers is not None:
            self.headers = headers
        super().__init__(self.detail)


class ConfigError(AuthkeepError):
    code = "config_error"
    detail = "The configuration is not valid."


class DatabaseUnavailable(AuthkeepError):
    code = "database_unavailable"
    status_code = 503
    detail = "The database is not reachable right now. Try again shortly."
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}


class DatabaseBootstrapError(AuthkeepError):
    """No usable database could be selected at start-up (strict mode, or production without DSN)."""

    code = "database_bootstrap_failed"
    status_code = 503


class SchemaBehind(AuthkeepError):
    code = "schema_behind"
    status_code = 503
    detail = "The database schema is behind this version. Run `authkeep db migrate`."


class MigrationFailed(AuthkeepError):
    code = "migration_failed"


class NotFound(AuthkeepError):
    code = "not_found"
    status_code = 404
    detail = "Not found."


class ValidationFailed(AuthkeepError):
    code = "validation_error"
    status_code = 422
    detail = "The request is not valid."


class Unauthorized(AuthkeepError):
    code = "unauthorized"
    status_code = 401
    detail = "Sign in first: no valid session or credentials were sent."


class Forbidden(AuthkeepError):
    code = "forbidden"
    status_code = 403
    detail = "You are not allowed to do this."


class CsrfRejected(AuthkeepError):
    code = "csrf_rejected"
    status_code = 403
    detail = "Cross-site request refused: it did not come from this site or a trusted origin."


class ReauthRequired(AuthkeepError):
    code = "reauth_required"
    status_code = 403
    detail = (
        "This action needs a recent sign-in. Confirm your password with "
        "POST /api/auth/reauthenticate (or sign in again), then retry with the new session."
    )


class AdminMfaRequired(AuthkeepError):
    code = "admin_mfa_required"
    status_code = 403
    detail = "Admin actions need multi-factor authentication. Turn on MFA for your account first."


class Conflict(AuthkeepError):
    code = "conflict"
    status_code = 409
    detail = "That conflicts with the current state."


class RateLimited(AuthkeepError):
    code = "rate_limited"
    status_code = 429
    detail = "Too many attempts. Wait before trying again."

    def __init__(self, retry_after: int, detail: str | None = None) -> None:
        super().__init__(detail, headers={"Retry-After": str(max(1, retry_after))})


class LimiterUnavailable(AuthkeepError):
    """The shared rate-limit store (Redis) did not answer: limits fail closed."""

    code = "rate_limiter_unavailable"
    status_code = 503
    detail = "Rate limits cannot be checked right now. Try again shortly."
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    503: "service_unavailable",
}


def error_response(error: AuthkeepError, request_id: str | None = None) -> JSONResponse:
    """The standard body; server errors also carry the request id, to find their log line."""
    body = {"error": error.code, "detail": error.detail}
    if error.status_code >= 500 and request_id:
        body["request_id"] = request_id
    return JSONResponse(
        body,
        status_code=error.status_code,
        headers={"Cache-Control": "no-store", **error.headers},
    )


def to_authkeep_error(exc: BaseException) -> AuthkeepError:
    """Map any exception to the error the client sees. Database outages become 503s."""
    from authkeep.core.db import is_database_outage

    if isinstance(exc, AuthkeepError):
        return exc
    if isinstance(exc, RequestValidationError):
        return ValidationFailed(_describe_validation(exc.errors()))
    if isinstance(exc, StarletteHTTPException):
        error = AuthkeepError(str(exc.detail), headers=dict(exc.headers or {}))
        error.status_code = exc.status_code
        error.code = _HTTP_CODES.get(exc.status_code, "http_error")
        return error
    if is_database_outage(exc):
        return DatabaseUnavailable()
    return AuthkeepError()


def _describe_validation(errors: Any) -> str:
    parts = []
    for item in list(errors)[:5]:
        where = ".".join(str(p) for p in item.get("loc", ()) if p != "body")
        parts.append(f"{where}: {item.get('msg', 'invalid')}" if where else item.get("msg", ""))
    return "; ".join(parts) or ValidationFailed.detail


async def handle_error(request: Request, exc: Exception) -> JSONResponse:
    """The one error handler: every error leaves as `{"error": code, "detail": text}`."""
    error = to_authkeep_error(exc)
    request_id = getattr(request.state, "request_id", None)
    if error.status_code >= 500:
        # Log the class only: driver messages can quote SQL and parameters.
        logger.error(
            "request failed: %s %s -> %s (%s) request_id=%s",
            request.method,
            request.url.path,
            error.code,
            type(exc).__name__,
            request_id,
        )
    return error_response(error, request_id)


class CatchAllMiddleware:
    """Turns any exception that escaped the routes into the standard JSON error.

    Starlette hands `Exception` handlers to its outermost middleware, which re-raises after
    answering; catching here instead keeps driver text (SQL, parameters) out of the server log.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            error = to_authkeep_error(exc)
            if error.code == "internal_error":
                logger.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            else:
                logger.error("request failed on %s: %s", scope.get("path"), error.code)
            if started:
                raise
            request_id = scope.get("state", {}).get("request_id")
            await error_response(error, request_id)(scope, receive, send)


def install_error_handlers(app: FastAPI) -> None:
    """Register the one handler for every error kind, and the catch-all behind it."""
    from sqlalchemy.exc import DBAPIError

    for kind in (
        AuthkeepError,
        RequestValidationError,
        StarletteHTTPException,
        DBAPIError,
        OSError,
    ):
        app.add_exception_handler(kind, handle_error)
    app.add_middleware(CatchAllMiddleware)
