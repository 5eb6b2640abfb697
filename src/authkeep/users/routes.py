"""`/api/auth`: sign-up, sign-in, sign-out, re-authentication, the current session, own
sessions, change password, delete account.

Browsers authenticate with the HttpOnly session cookie; everything else sends
`Authorization: Bearer <token>`. Sign-in returns the token in the JSON body as well as in the
cookie, so API clients need no cookie jar. Sign-up never signs in (the client signs in next),
so its answer cannot differ between new and existing emails. Every response is `no-store`.

Routes that hash (sign-in, sign-up, re-authenticate, change password, delete account) never
hold a database connection across the hash: the first two do not use the request unit of work
at all, the others commit it right after checking the session.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, BackgroundTasks, Request, Response
from fastapi.routing import APIRoute
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.types import Message

from authkeep.audit import service as audit
from authkeep.config import Settings
from authkeep.core.deps import DB, AppDatabase, AppSettings
from authkeep.errors import AuthkeepError, CsrfRejected, NotFound, ReauthRequired
from authkeep.sessions import service as sessions
from authkeep.sessions.cookies import clear_session_cookie, cross_site
from authkeep.sessions.csrf import csrf_token
from authkeep.sessions.deps import CurrentSession, FreshSession, bearer_token
from authkeep.sessions.service import ActiveSession
from authkeep.users import account, email_flows, reauth, signin
from authkeep.users.schemas import (
    AccountCreate,
    AccountDelete,
    CurrentSessionRead,
    MfaChallengeRead,
    PasswordChange,
    PasswordChanged,
    Reauthentication,
    SessionCreate,
    SessionCreated,
    SessionRead,
    SessionsRevoked,
    SignUpAccepted,
    UserRead,
)

# Two passwords at the largest policy length, JSON-escaped as surrogate pairs, plus room for
# the other fields. Larger bodies are refused before they are parsed (BI-07, CHK-PW-02).
BASE_BODY_LIMIT = 16 * 1024
ESCAPED_BYTES_PER_CODE_POINT = 12


class PayloadTooLarge(AuthkeepError):
    code = "payload_too_large"
    status_code = 413
    detail = "The request body is too large."


def body_limit(settings: Settings) -> int:
    return BASE_BODY_LIMIT + 2 * ESCAPED_BYTES_PER_CODE_POINT * settings.password_max_length


async def bounded_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise PayloadTooLarge()
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge()
        chunks.append(chunk)
    return b"".join(chunks)


class AuthRoute(APIRoute):
    """Caps the request body before FastAPI parses it, and marks every answer `no-store`."""

    def max_body_bytes(self, settings: Settings) -> int:
        """The body cap; routers with larger bodies override it."""
        return body_limit(settings)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def bounded(request: Request) -> Response:
            if request.method not in {"GET", "HEAD", "OPTIONS"}:
                settings: Settings = request.app.state.settings
                body = await bounded_body(request, self.max_body_bytes(settings))
                request = Request(request.scope, _replay(body, request))
            response = await handler(request)
            response.headers["Cache-Control"] = "no-store"
            return response

        return bounded


def _replay(body: bytes, request: Request) -> Callable[[], Coroutine[Any, Any, Message]]:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await request.receive()

    return receive


router = APIRouter(prefix="/api/auth", tags=["auth"], route_class=AuthRoute)


def ensure_same_site_login(request: Request, settings: Settings) -> None:
    """Login CSRF (CHK-CK-03): a browser that says the form came from another site is refused
    (the same-site rule of cookie requests). Clients that send neither `Sec-Fetch-Site` nor
    `Origin` (not browsers) are not affected: there is no session, so no CSRF token yet."""
    if cross_site(request, settings, allow_headerless=True):
        raise CsrfRejected()


@router.post("/sign-up", status_code=202, response_model=SignUpAccepted)
async def create_account(
    body: AccountCreate,
    request: Request,
    background: BackgroundTasks,
    database: AppDatabase,
    settings: AppSettings,
) -> SignUpAccepted:
    """Create an account and email a verification link. The answer is the same whether or not
    the email was registered."""
    ensure_same_site_login(request, settings)
    available = email_flows.mailer(request).available
    base_url = email_flows.link_base(request, settings) if available else None
    await signin.sign_up(database, request, settings, body.email, body.password, body.name)
    await email_flows.queue_sign_up_verification(
        database, request, background, settings, body.email, base_url
    )
    return SignUpAccepted()


@router.post("/sign-in", response_model=SessionCreated | MfaChallengeRead)
async def create_session(
    body: SessionCreate,
    request: Request,
    response: Response,
    database: AppDatabase,
    settings: AppSettings,
) -> SessionCreated | MfaChallengeRead:
    """Sign in: a new session (cookie + `token` in the body), or an MFA challenge."""
    ensure_same_site_login(request, settings)
    result = await signin.sign_in(database, request, response, settings, body.email, body.password)
    if isinstance(result, signin.MfaChallenge):
        return MfaChallengeRead(mfa_token=result.mfa_token)
    return SessionCreated.of(result, settings)


@router.post("/reauthenticate", response_model=SessionCreated)
async def reauthenticate(
    body: Reauthentication,
    principal: CurrentSession,
    db: DB,
    request: Request,
    response: Response,
    database: AppDatabase,
    settings: AppSettings,
) -> SessionCreated:
    """Prove who you are again (password, plus a code with MFA on): this session ends and a
    fresh one replaces it (new token, new `csrf_token`; the cookie too if you sent one)."""
    await db.commit()  # release the connection before argon2 runs
    cookie = response if bearer_token(request) is None else None
    result = await reauth.reauthenticate(database, request, cookie, settings, principal, body)
    return SessionCreated.of(result, settings)


@router.post("/sign-out", status_code=204)
async def delete_session(
    principal: CurrentSession, db: DB, request: Request, settings: AppSettings
) -> Response:
    """End the current session and clear the cookie (`Clear-Site-Data`)."""
    await sessions.revoke(db, principal.user.id, principal.session.id)
    await _audit(db, request, principal, "auth.sign_out", principal.session.id)
    response = Response(status_code=204)
    clear_session_cookie(response, request, settings)
    return response


@router.get("/session", response_model=CurrentSessionRead)
async def read_session(principal: CurrentSession, settings: AppSettings) -> CurrentSessionRead:
    """Who is signed in, this session's timestamps, and its `csrf_token` (for browsers, whose
    script cannot read the HttpOnly cookie)."""
    return CurrentSessionRead(
        user=UserRead.of(principal.user),
        session=SessionRead.of(principal.session, current_id=principal.session.id),
        csrf_token=csrf_token(settings, principal.session.token_hash),
    )


@router.get("/sessions", response_model=list[SessionRead])
async def list_sessions(principal: CurrentSession, db: DB) -> list[SessionRead]:
    """The user's live sessions, newest first; `current` marks this one."""
    live = await sessions.list_for_user(db, principal.user.id)
    return [SessionRead.of(s, current_id=principal.session.id) for s in live]


@router.delete("/sessions/{session_id}", status_code=204)
async def revoke_session(
    session_id: uuid.UUID,
    principal: CurrentSession,
    db: DB,
    request: Request,
    settings: AppSettings,
) -> Response:
    """End one of your sessions. Ending another session needs a fresh session (CHK-SE-06)."""
    is_current = session_id == principal.session.id
    if not is_current and not sessions.is_fresh(principal.session, settings):
        raise ReauthRequired()
    if not await sessions.revoke(db, principal.user.id, session_id):
        raise NotFound("No such session among yours.")
    await _audit(db, request, principal, "auth.session_revoke", session_id)
    response = Response(status_code=204)
    if is_current:
        clear_session_cookie(response, request, settings)
    return response


@router.delete("/sessions", response_model=SessionsRevoked)
async def revoke_other_sessions(
    principal: FreshSession, db: DB, request: Request
) -> SessionsRevoked:
    """End every session but this one (needs a fresh session)."""
    ended = await sessions.revoke_all(db, principal.user.id, except_id=principal.session.id)
    await _audit(db, request, principal, "auth.sessions_revoke_others", None, {"ended": ended})
    return SessionsRevoked(revoked=ended)


@router.post("/password/change", response_model=PasswordChanged)
async def change_password(
    body: PasswordChange,
    principal: FreshSession,
    db: DB,
    request: Request,
    database: AppDatabase,
    settings: AppSettings,
) -> PasswordChanged:
    """Change your password (current one required, fresh session). Ends your other sessions."""
    await db.commit()  # release the connection before argon2 runs
    ended = await account.change_password(
        database, request, settings, principal, body.current_password, body.new_password
    )
    return PasswordChanged(sessions_revoked=ended)


@router.post("/account/delete", status_code=204)
async def delete_account(
    body: AccountDelete,
    principal: FreshSession,
    db: DB,
    request: Request,
    database: AppDatabase,
    settings: AppSettings,
) -> Response:
    """Delete your account (password required, fresh session). Ends every session; the email
    can be registered again as a new account."""
    await db.commit()  # release the connection before argon2 runs
    await account.delete_own_account(database, request, settings, principal, body.password)
    response = Response(status_code=204)
    clear_session_cookie(response, request, settings)
    return response


async def _audit(
    db: AsyncSession,
    request: Request,
    principal: ActiveSession,
    action: str,
    target: uuid.UUID | None,
    detail: dict[str, Any] | None = None,
) -> None:
    await audit.record(
        db,
        action,
        "success",
        request=request,
        actor_id=principal.user.id,
        actor=principal.user.email,
        target=str(target) if target else None,
        detail=detail,
    )
