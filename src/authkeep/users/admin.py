"""Administering accounts: make or update an admin, disable and enable users, force a password
reset, end a user's sessions, list users. The CLI (`authkeep users …`) and the admin API
(`/api/admin`) are thin wrappers over these functions.

Rules every function here keeps:
- A change that must take effect at once also ends the user's sessions in the same unit of
  work: disabling (CHK-SE-05) and forcing a password reset (CHK-PW-06).
- Every call writes exactly one audit row (CHK-AC-06, CHK-LG-01), also when nothing changed
  (`detail.changed` says which). The actor is the admin's session, or `cli` for the command
  line; the target is the user's id, and `detail.email` the address it had at the time.
- Passwords are hashed outside any unit of work (`ensure_admin` opens one before and one
  after the hash, never holding a connection across it).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from authkeep.audit import service as audit
from authkeep.audit.models import AuditEvent
from authkeep.config import Settings
from authkeep.core.db import Database
from authkeep.core.models import utcnow
from authkeep.core.security import PasswordHashing
from authkeep.errors import Conflict, NotFound, ValidationFailed
from authkeep.mfa import service as mfa
from authkeep.sessions import service as sessions
from authkeep.sessions.deps import ADMIN_ROLE
from authkeep.sessions.service import ActiveSession
from authkeep.users import one_time
from authkeep.users import service as users
from authkeep.users.models import OneTimeToken, User
from authkeep.users.passwords import hash_password, validate, verify_password
from authkeep.users.signin import MFA_CHALLENGE

CLI_ACTOR = "cli"
USER_ROLE = "user"
ROLES = (USER_ROLE, ADMIN_ROLE)


class UnknownUser(NotFound):
    code = "unknown_user"
    detail = "No user with this id or email."


class CannotTargetSelf(Conflict):
    code = "cannot_target_self"
    detail = "Admins cannot do this to their own account: ask another admin, or use the CLI."


class PasswordNeeded(ValidationFailed):
    code = "password_needed"
    detail = "A new admin account needs a password."


@dataclass(frozen=True)
class Actor:
    """Who does an admin action: an admin's session (with its request) or the command line."""

    name: str = CLI_ACTOR
    user_id: uuid.UUID | None = None
    request: Request | None = None

    @classmethod
    def of(cls, principal: ActiveSession, request: Request) -> Actor:
        return cls(principal.user.email, principal.user.id, request)


CLI = Actor()


@dataclass(frozen=True)
class Outcome:
    """What an admin action did to one user."""

    user: User
    changed: bool
    sessions_ended: int = 0
    changes: list[str] = field(default_factory=list)
    created: bool = False


async def record(
    db: AsyncSession,
    actor: Actor,
    action: str,
    target: User,
    detail: dict[str, Any] | None = None,
) -> AuditEvent:
    """The one audit row of an admin action on `target`."""
    return await audit.record(
        db,
        action,
        "success",
        request=actor.request,
        actor_id=actor.user_id,
        actor=actor.name,
        target=str(target.id),
        detail={"email": target.email, **(detail or {})},
    )


async def find(db: AsyncSession, user_id: uuid.UUID | None = None, email: str = "") -> User:
    """The (not deleted) user with this id or email, or `UnknownUser`."""
    user = await users.get(db, user_id) if user_id else await users.get_by_email(db, email)
    if user is None:
        raise UnknownUser(f"No user with the email {email}." if email else None)
    return user


async def has_admin(db: AsyncSession) -> bool:
    """True when an admin who can sign in exists (not disabled, not deleted)."""
    found = await db.scalar(
        select(User.id)
        .where(User.role == ADMIN_ROLE, User.disabled_at.is_(None), User.deleted_at.is_(None))
        .limit(1)
    )
    return found is not None


async def list_users(
    db: AsyncSession,
    *,
    email_prefix: str | None = None,
    role: str | None = None,
    after: str | None = None,
    limit: int = 50,
) -> list[User]:
    """Users ordered by email (keyset paging: pass the last email as `after`). Deleted accounts
    are left out. The prefix is compared with stored (canonical, case-folded) emails."""
    query = select(User).where(User.deleted_at.is_(None)).order_by(User.email).limit(limit)
    if email_prefix:
        query = query.where(User.email.startswith(email_prefix.casefold(), autoescape=True))
    if role:
        query = query.where(User.role == role)
    if after:
        query = query.where(User.email > after)
    return list((await db.scalars(query)).all())


async def set_disabled(db: AsyncSession, user: User, *, disabled: bool, actor: Actor) -> Outcome:
    """Disable (ends every session and voids outstanding one-time links at once) or enable."""
    now = utcnow()
    query = update(User).where(User.id == user.id)
    if disabled:
        query = query.where(User.disabled_at.is_(None)).values(disabled_at=now)
    else:
        query = query.where(User.disabled_at.is_not(None)).values(disabled_at=None)
    changed = bool((await db.execute(query)).rowcount)  # type: ignore[attr-defined]
    ended = 0
    if disabled:
        ended = await sessions.revoke_all(db, user.id)
        await db.execute(
            update(OneTimeToken)
            .where(OneTimeToken.user_id == user.id, OneTimeToken.used_at.is_(None))
            .values(used_at=now)
        )
    await db.refresh(user)
    action = "admin.user.disable" if disabled else "admin.user.enable"
    await record(db, actor, action, user, {"changed": changed, "sessions_ended": ended})
    return Outcome(user, changed, ended)


async def force_password_reset(db: AsyncSession, user: User, *, actor: Actor) -> Outcome:
    """Require a new password before the next sign-in (CHK-PW-06) and end every session now.
    Reset links stay valid: the user needs one."""
    result = await db.execute(
        update(User)
        .where(User.id == user.id, User.password_reset_required.is_(False))
        .values(password_reset_required=True)
    )
    changed = bool(result.rowcount)  # type: ignore[attr-defined]
    ended = await sessions.revoke_all(db, user.id)
    await one_time.revoke_unused(db, user.id, MFA_CHALLENGE)
    await db.refresh(user)
    detail = {"changed": changed, "sessions_ended": ended}
    await record(db, actor, "admin.user.force_password_reset", user, detail)
    return Outcome(user, changed, ended)


async def reset_mfa(db: AsyncSession, user: User, *, actor: Actor) -> Outcome:
    """Take a second factor away from a user who lost it (or every factor after a change of
    AUTHKEEP_SECRET_KEY, which the TOTP seeds and recovery codes depend on): the factor, the
    recovery codes and open MFA challenges go, and every session ends. The user signs in with
    the password alone and can turn MFA on again."""
    changed = await mfa.is_enabled(db, user.id)
    await mfa.remove(db, user.id)
    await one_time.revoke_unused(db, user.id, MFA_CHALLENGE)
    ended = await sessions.revoke_all(db, user.id)
    await record(
        db, actor, "admin.user.mfa_reset", user, {"changed": changed, "sessions_ended": ended}
    )
    return Outcome(user, changed, ended)


async def end_sessions(db: AsyncSession, user: User, *, actor: Actor) -> Outcome:
    """End every session of the user."""
    ended = await sessions.revoke_all(db, user.id)
    detail = {"changed": ended > 0, "sessions_ended": ended}
    await record(db, actor, "admin.user.sessions_revoke", user, detail)
    return Outcome(user, ended > 0, ended)


@dataclass(frozen=True)
class _Snapshot:
    id: uuid.UUID
    password_hash: str | None


async def ensure_admin(
    database: Database,
    hashing: PasswordHashing,
    settings: Settings,
    email: str,
    password: str | None,
    *,
    actor: Actor = CLI,
) -> Outcome:
    """Create an admin, or make an existing user one: role admin, email verified, and the
    password set only when `password` is given and differs from the current one. Running it
    twice with the same input changes nothing the second time (`changed` is False).

    Raises `InvalidEmail`, `PasswordRejected` (the policy), `PasswordNeeded` (new account
    without a password), `EmailTaken` (lost a race with a concurrent sign-up)."""
    canonical = users.canonical_email(email)
    if password is not None:
        validate(password, settings, email=canonical)
    async with database.session_scope() as db:
        found = await users.get_by_email(db, canonical)
        snapshot = _Snapshot(found.id, found.password_hash) if found else None
    if snapshot is None and password is None:
        raise PasswordNeeded()
    new_hash = await _new_hash(hashing, snapshot, password)
    async with database.session_scope() as db:
        if snapshot is None:
            assert new_hash is not None
            user = await users.create_user(
                db, canonical, password_hash=new_hash, role=ADMIN_ROLE, email_verified=True
            )
            await record(db, actor, "admin.user.create_admin", user, {"changed": True})
            return Outcome(user, True, changes=["created"], created=True)
        return await _update_admin(db, await find(db, snapshot.id), new_hash, actor)


async def _new_hash(
    hashing: PasswordHashing, snapshot: _Snapshot | None, password: str | None
) -> str | None:
    """The hash to store, or None when the password is not given or already the current one."""
    if password is None:
        return None
    if snapshot is not None and snapshot.password_hash is not None:
        matches, _ = await verify_password(hashing, snapshot.password_hash, password)
        if matches:
            return None
    return await hash_password(hashing, password)


async def _update_admin(
    db: AsyncSession, user: User, new_hash: str | None, actor: Actor
) -> Outcome:
    changes: list[str] = []
    if user.role != ADMIN_ROLE:
        user.role = ADMIN_ROLE
        changes.append("role")
    if user.email_verified_at is None:
        user.email_verified_at = utcnow()
        changes.append("email_verified")
    ended = 0
    if new_hash is not None:
        await db.flush()
        # Like any password change: failures cleared, reset links voided, sessions ended.
        ended = await users.set_password(db, user.id, new_hash)
        changes.append("password")
        await db.refresh(user)
    detail = {"changed": bool(changes), "changes": changes, "sessions_ended": ended}
    await record(db, actor, "admin.user.create_admin", user, detail)
    return Outcome(user, bool(changes), ended, changes)
