"""`/api/admin`: list users, disable and enable them, force a password reset, end a user's
sessions, read the audit log.

Who may call (CHK-AC-01, CHK-AC-06): no session → 401; a signed-in non-admin → 403
`forbidden`; with `AUTHKEEP_ADMIN_MFA_REQUIRED`, an admin whose account has no MFA → 403
`admin_mfa_required`; an admin → the route. Actions that change an account also need a fresh
session (signed in within `AUTHKEEP_SESSION_FRESH_MINUTES`), else 403 `reauth_required`.
Refusals of a signed-in caller are audited as `admin.access` / `denied`; every action writes
one audit row (`users.admin`). Reading users and the audit log is not audited: it changes
nothing, and auditing reads of the audit log would bury the actions in their own echo.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from pydantic import AwareDatetime, BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from authkeep.audit import service as audit
from authkeep.audit.models import AuditEvent
from authkeep.config import Role, Settings, resolve_role
from authkeep.core.deps import DB, AppSettings, get_settings
from authkeep.errors import AdminMfaRequired, Forbidden, ReauthRequired
from authkeep.keys.cache import invalidations_for
from authkeep.mfa import service as mfa
from authkeep.sessions import service as sessions
from authkeep.sessions.deps import ADMIN_ROLE, CurrentSession
from authkeep.sessions.service import ActiveSession
from authkeep.users import admin, setup_link
from authkeep.users.models import User
from authkeep.users.routes import AuthRoute
from authkeep.users.schemas import SessionsRevoked
from authkeep.users.setup_link import announce_setup_link as announce_setup_link

MAX_USERS_PAGE = 200
MAX_AUDIT_PAGE = 500


async def _deny(db: AsyncSession, request: Request, caller: User, reason: str) -> None:
    """Audit a refused admin call. Committed here: the refusal rolls the request back."""
    await audit.record(
        db,
        "admin.access",
        "denied",
        request=request,
        actor_id=caller.id,
        actor=caller.email,
        detail={"reason": reason, "method": request.method, "path": request.url.path},
    )
    await db.commit()


async def require_admin_mfa(db: AsyncSession, request: Request, admin_user: User) -> None:
    """With `AUTHKEEP_ADMIN_MFA_REQUIRED`, refuse (and audit) an admin power to an admin whose
    account has no confirmed MFA factor (CHK-AC-06). Checked on every request, so turning MFA
    off takes the admin powers away at once. Every use of an admin power calls this: the
    admin API through `Admin`, and the routes that let an admin read another user's data."""
    settings = await get_settings(request)
    if settings.admin_mfa_required and not await mfa.is_enabled(db, admin_user.id):
        await _deny(db, request, admin_user, "mfa_required")
        raise AdminMfaRequired()


async def admin_principal(principal: CurrentSession, db: DB, request: Request) -> ActiveSession:
    """The caller, if an admin (role read from the database on every request) who meets the
    MFA requirement."""
    if principal.user.role != ADMIN_ROLE:
        await _deny(db, request, principal.user, "not_admin")
        raise Forbidden("Only admins may do this.")
    await require_admin_mfa(db, request, principal.user)
    return principal


Admin = Annotated[ActiveSession, Depends(admin_principal)]


async def fresh_admin(
    principal: Admin, db: DB, request: Request, settings: AppSettings
) -> ActiveSession:
    """An admin who signed in recently enough for an action that changes an account."""
    if not sessions.is_fresh(principal.session, settings):
        await _deny(db, request, principal.user, "reauth_required")
        raise ReauthRequired()
    return principal


FreshAdmin = Annotated[ActiveSession, Depends(fresh_admin)]


class AdminUserRead(BaseModel):
    id: uuid.UUID
    email: str
    name: str | None
    role: str
    email_verified: bool
    disabled: bool
    disabled_at: datetime | None
    password_reset_required: bool
    last_login_at: datetime | None
    created_at: datetime

    @classmethod
    def of(cls, user: User) -> AdminUserRead:
        return cls(
            id=user.id,
            email=user.email,
            name=user.name,
            role=user.role,
            email_verified=user.email_verified_at is not None,
            disabled=user.disabled_at is not None,
            disabled_at=user.disabled_at,
            password_reset_required=user.password_reset_required,
            last_login_at=user.last_login_at,
            created_at=user.created_at,
        )


class UserPage(BaseModel):
    """`next_after` is the value for `after` to get the next page (null on the last page)."""

    users: list[AdminUserRead]
    next_after: str | None


class UserChanged(BaseModel):
    """`changed` is false when the user already was in that state."""

    user: AdminUserRead
    changed: bool
    sessions_ended: int


class AuditEventRead(BaseModel):
    id: uuid.UUID
    at: datetime
    action: str
    outcome: str
    actor_id: uuid.UUID | None
    actor: str | None
    target: str | None
    ip: str | None
    user_agent: str | None
    request_id: str | None
    detail: dict[str, Any] | None

    @classmethod
    def of(cls, event: AuditEvent) -> AuditEventRead:
        return cls.model_validate(event, from_attributes=True)


class AuditPage(BaseModel):
    """Newest first. `next_before` is the value for `before` to get older events."""

    events: list[AuditEventRead]
    next_before: datetime | None


router = APIRouter(prefix="/api/admin", tags=["admin"], route_class=AuthRoute)


@router.get("/users", response_model=UserPage)
async def list_users(
    principal: Admin,
    db: DB,
    email_prefix: Annotated[str | None, Query(max_length=320)] = None,
    role: Literal["user", "admin"] | None = None,
    after: Annotated[str | None, Query(max_length=320)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_USERS_PAGE)] = 50,
) -> UserPage:
    """Users by email, `limit` per page; filter by email prefix and role."""
    found = await admin.list_users(
        db, email_prefix=email_prefix, role=role, after=after, limit=limit
    )
    next_after = found[-1].email if len(found) == limit else None
    return UserPage(users=[AdminUserRead.of(u) for u in found], next_after=next_after)


async def _user_committed(db: AsyncSession, request: Request, user_id: uuid.UUID) -> None:
    """Commit, then drop the user's keys from every node's verify cache (the CLI, which has
    no app, relies on the cache TTL, AUTHKEEP_KEY_CACHE_SECONDS)."""
    await db.commit()
    await invalidations_for(request.app).user_changed(user_id)


def _changed(outcome: admin.Outcome) -> UserChanged:
    return UserChanged(
        user=AdminUserRead.of(outcome.user),
        changed=outcome.changed,
        sessions_ended=outcome.sessions_ended,
    )


@router.post("/users/{user_id}/disable", response_model=UserChanged)
async def disable_user(
    user_id: uuid.UUID, principal: FreshAdmin, db: DB, request: Request
) -> UserChanged:
    """Disable the account and end all its sessions at once (fresh session; not yourself).
    Its API keys answer FORBIDDEN from then on."""
    if user_id == principal.user.id:
        raise admin.CannotTargetSelf()
    user = await admin.find(db, user_id)
    actor = admin.Actor.of(principal, request)
    outcome = await admin.set_disabled(db, user, disabled=True, actor=actor)
    await _user_committed(db, request, user.id)
    return _changed(outcome)


@router.post("/users/{user_id}/enable", response_model=UserChanged)
async def enable_user(
    user_id: uuid.UUID, principal: FreshAdmin, db: DB, request: Request
) -> UserChanged:
    """Let a disabled account sign in again (fresh session)."""
    user = await admin.find(db, user_id)
    actor = admin.Actor.of(principal, request)
    outcome = await admin.set_disabled(db, user, disabled=False, actor=actor)
    await _user_committed(db, request, user.id)
    return _changed(outcome)


@router.post("/users/{user_id}/force-password-reset", response_model=UserChanged)
async def force_password_reset(
    user_id: uuid.UUID, principal: FreshAdmin, db: DB, request: Request
) -> UserChanged:
    """Require a new password before the next sign-in and end all sessions (CHK-PW-06)."""
    if user_id == principal.user.id:
        raise admin.CannotTargetSelf()
    user = await admin.find(db, user_id)
    actor = admin.Actor.of(principal, request)
    return _changed(await admin.force_password_reset(db, user, actor=actor))


@router.post("/users/{user_id}/mfa/reset", response_model=UserChanged)
async def reset_user_mfa(
    user_id: uuid.UUID, principal: FreshAdmin, db: DB, request: Request
) -> UserChanged:
    """Remove the user's second factor and recovery codes and end all their sessions, for a
    user who lost both (fresh session; not yourself: turn your own MFA off with your codes)."""
    if user_id == principal.user.id:
        raise admin.CannotTargetSelf()
    user = await admin.find(db, user_id)
    return _changed(await admin.reset_mfa(db, user, actor=admin.Actor.of(principal, request)))


@router.delete("/users/{user_id}/sessions", response_model=SessionsRevoked)
async def revoke_user_sessions(
    user_id: uuid.UUID, principal: FreshAdmin, db: DB, request: Request
) -> SessionsRevoked:
    """End every session of the user (yours included, if you name yourself)."""
    user = await admin.find(db, user_id)
    outcome = await admin.end_sessions(db, user, actor=admin.Actor.of(principal, request))
    return SessionsRevoked(revoked=outcome.sessions_ended)


@router.get("/audit", response_model=AuditPage)
async def list_audit_events(
    principal: Admin,
    db: DB,
    action: Annotated[str | None, Query(max_length=64)] = None,
    actor_id: uuid.UUID | None = None,
    before: AwareDatetime | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_AUDIT_PAGE)] = 100,
) -> AuditPage:
    """The audit log, newest first, filtered by action, actor and time (`before`, with a zone)."""
    events = await audit.recent(db, limit=limit, action=action, actor_id=actor_id, before=before)
    next_before = events[-1].at if len(events) == limit else None
    return AuditPage(events=[AuditEventRead.of(e) for e in events], next_before=next_before)


def install(app: FastAPI, settings: Settings) -> None:
    """The admin API; the first-run setup page only on a standalone development node."""
    app.include_router(router)
    if resolve_role(settings) is Role.STANDALONE and not settings.is_production:
        app.include_router(setup_link.page_router)
        app.include_router(setup_link.router)
