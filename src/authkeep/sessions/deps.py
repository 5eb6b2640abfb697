"""Who is calling: a route's signature says it (`principal: CurrentSession`, or
`FreshSession` for sensitive actions). Admin routes use `users.admin_routes.Admin` and
`FreshAdmin`, which build on these.

The token comes from `Authorization: Bearer …` or the session cookie — never from a URL. Cookie
requests that change state must pass the CSRF checks in `sessions.csrf`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from authkeep.core import apilimits
from authkeep.core.deps import DB, AppSettings
from authkeep.errors import ReauthRequired, Unauthorized
from authkeep.sessions import service as sessions
from authkeep.sessions.cookies import read_cookie
from authkeep.sessions.csrf import ensure_cookie_request_allowed
from authkeep.sessions.service import ActiveSession

ADMIN_ROLE = "admin"


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


async def current_session(request: Request, db: DB, settings: AppSettings) -> ActiveSession:
    token = bearer_token(request)
    if token is None:
        token = read_cookie(request)
        if token is not None:
            ensure_cookie_request_allowed(request, settings, token)
    if token is None:
        raise Unauthorized()
    active = await sessions.authenticate(db, token, settings)
    if active is None:
        raise Unauthorized("Your session has ended or is not valid. Sign in again.")
    request.state.principal = active
    await apilimits.charge_session(request, active.user.id)
    return active


CurrentSession = Annotated[ActiveSession, Depends(current_session)]


async def fresh_session(principal: CurrentSession, settings: AppSettings) -> ActiveSession:
    if not sessions.is_fresh(principal.session, settings):
        raise ReauthRequired()
    return principal


FreshSession = Annotated[ActiveSession, Depends(fresh_session)]
