"""Accounts: the canonical email, creating users, setting passwords, deleting accounts, the
per-account failure counter, and the last step of every sign-in and re-authentication
(`complete_sign_in`).

Canonical email (RELIABILITY BI-10). Uniqueness is decided on this one form, computed by
`canonical_email` and stored in `users.email`:
1. surrounding whitespace is removed; control, format (zero-width), surrogate and whitespace
   characters inside are refused, as is more than one `@`;
2. the local part is Unicode NFKC-normalised and case-folded (full Unicode case folding, so
   `Alice`, `ALICE` and its full-width spelling are one address, and NFC/NFD
   spellings of an accent are one address);
3. the domain is NFKC-normalised, case-folded, and converted to its IDNA (punycode) ASCII form,
   so `bücher.example` and `xn--bcher-kva.example` are one domain; a trailing dot is dropped.
Provider-specific rules (Gmail dots, `+tags`) are not applied: they differ between providers.

Service functions add and flush; the caller's unit of work commits. Password hashing never
happens here while a connection is held: callers hash first (see `users.signin`). The
statements every sign-in runs are prepared once and run on the unit of work's connection
(`reserve_failure`, `complete_sign_in`, `finish_attempt`): they return snapshots, not objects
attached to the unit of work.
"""

from __future__ import annotations

import logging
import re
import unicodedata
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fastapi import Request, Response
from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from authkeep.audit import service as audit
from authkeep.audit.models import AuditEvent
from authkeep.config import Settings
from authkeep.core.db import Database
from authkeep.core.models import utcnow
from authkeep.core.request_context import request_ip, user_agent
from authkeep.core.security import token_digest
from authkeep.errors import AuthkeepError, Conflict
from authkeep.mfa.models import MfaFactor, RecoveryCode
from authkeep.sessions import service as sessions
from authkeep.sessions.cookies import read_cookie, set_session_cookie
from authkeep.sessions.models import Session
from authkeep.users import one_time
from authkeep.users.models import OneTimeToken, User

audit_logger = logging.getLogger("authkeep.audit")
MAX_EMAIL_LENGTH = 320
MAX_LOCAL_LENGTH = 64
_REFUSED_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"}
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_DOTS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})


class InvalidEmail(ValueError):
    """The text is not an email address authkeep accepts (see the module doc)."""


class InvalidCredentials(AuthkeepError):
    """The one answer for unknown email, wrong password, disabled, deleted or locked accounts."""

    code = "invalid_credentials"
    status_code = 401
    detail = "The email or password is not correct."


class PasswordResetRequired(AuthkeepError):
    """Correct password, but an admin or a detected compromise requires a reset first."""

    code = "password_reset_required"
    status_code = 403
    detail = "Your password must be reset before you can sign in. Use 'forgot password'."


class EmailNotVerified(AuthkeepError):
    code = "email_not_verified"
    status_code = 403
    detail = "Confirm your email address before signing in: follow the link we sent you."


class EmailTaken(Conflict):
    code = "email_taken"
    detail = "An account with this email already exists."


@dataclass(frozen=True)
class SignInResult:
    """A started session: the plaintext token exists only here and in the response."""

    token: str
    session: Session
    user: User


@dataclass(frozen=True)
class CountedAccount:
    """The account a password attempt names, as the statement that counted the attempt left it:
    just what judging the attempt needs (`reserve_failure`)."""

    id: uuid.UUID
    email: str
    password_hash: str | None
    failed_login_count: int
    disabled_at: datetime | None
    password_reset_required: bool
    email_verified_at: datetime | None


def _fold(text: str) -> str:
    value = text
    for _ in range(3):  # NFKC_Casefold-style; iterate to a fixed point
        folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", value).casefold())
        if folded == value:
            break
        value = folded
    return value


def _canonical_domain(domain: str) -> str:
    folded = _fold(domain).translate(_DOTS).rstrip(".")
    try:
        ascii_domain = folded.encode("idna").decode("ascii").lower()
    except UnicodeError as exc:
        raise InvalidEmail("The email address has an invalid domain.") from exc
    if not all(_LABEL.match(label) for label in ascii_domain.split(".")):
        raise InvalidEmail("The email address has an invalid domain.")
    return ascii_domain


def canonical_email(raw: str) -> str:
    """The one stored and compared form of an email address; raises `InvalidEmail`."""
    value = raw.strip()
    if not value or len(value) > MAX_EMAIL_LENGTH:
        raise InvalidEmail("Enter an email address of at most 320 characters.")
    if any(unicodedata.category(ch) in _REFUSED_CATEGORIES for ch in value):
        raise InvalidEmail("The email address contains spaces or invisible characters.")
    local, at, domain = value.rpartition("@")
    if not at or not local or not domain or "@" in local:
        raise InvalidEmail("Enter an email address like name@example.com.")
    local = _fold(local)
    if len(local.encode()) > MAX_LOCAL_LENGTH:
        raise InvalidEmail("The part before @ is too long.")
    result = f"{local}@{_canonical_domain(domain)}"
    if len(result) > MAX_EMAIL_LENGTH:
        raise InvalidEmail("Enter an email address of at most 320 characters.")
    return result


async def get(db: AsyncSession, user_id: uuid.UUID) -> User | None:
    """The user with this id, unless the account was deleted."""
    user = await db.get(User, user_id)
    return user if user is not None and user.deleted_at is None else None


async def get_by_email(db: AsyncSession, email: str) -> User | None:
    """The (not deleted) user whose canonical email matches `email` in any spelling."""
    try:
        canonical = canonical_email(email)
    except InvalidEmail:
        return None
    return await db.scalar(select(User).where(User.email == canonical, User.deleted_at.is_(None)))


async def create_user(
    db: AsyncSession,
    email: str,
    *,
    password_hash: str | None,
    name: str | None = None,
    role: str = "user",
    email_verified: bool = False,
) -> User:
    """Add a user. `password_hash` comes from `users.passwords.hash_password` (hash before
    opening the unit of work). Raises `EmailTaken` when the canonical email exists."""
    user = User(
        email=canonical_email(email),
        name=name,
        password_hash=password_hash,
        role=role,
        email_verified_at=utcnow() if email_verified else None,
    )
    try:
        async with db.begin_nested():
            db.add(user)
            await db.flush()
    except IntegrityError as exc:
        raise EmailTaken() from exc
    return user


async def set_password(
    db: AsyncSession,
    user_id: uuid.UUID,
    password_hash: str,
    *,
    keep_session_id: uuid.UUID | None = None,
) -> int:
    """Store a new hash, clear the failure count and any forced reset, void outstanding reset
    links, and end every session but `keep_session_id` (CHK-PW-09). Returns sessions ended."""
    await db.execute(
        update(User)
        .where(User.id == user_id)
        .values(password_hash=password_hash, failed_login_count=0, password_reset_required=False)
    )
    await one_time.revoke_unused(db, user_id, one_time.RESET_PASSWORD)
    return await sessions.revoke_all(db, user_id, except_id=keep_session_id)


async def delete_account(db: AsyncSession, user_id: uuid.UUID) -> int:
    """Tombstone the account: the email is replaced (so it can sign up again as a new account),
    the password, name and second factors are removed, every session ends. The row stays so
    audit entries keep their subject. Returns the number of sessions ended."""
    await db.execute(
        update(User)
        .where(User.id == user_id)
        .values(
            email=f"deleted-{user_id.hex}@deleted.invalid",
            name=None,
            password_hash=None,
            deleted_at=utcnow(),
            failed_login_count=0,
        )
    )
    for model in (MfaFactor, RecoveryCode, OneTimeToken):
        await db.execute(delete(model).where(model.user_id == user_id))
    return await sessions.revoke_all(db, user_id)


# The statements every sign-in runs are built once, with bound parameters, and run on the unit
# of work's connection: building a statement per call and the ORM's bookkeeping cost about as
# much Python as executing it (bench/README.md, "Identity").
_COUNTED_COLUMNS = (
    User.id,
    User.email,
    User.password_hash,
    User.failed_login_count,
    User.disabled_at,
    User.password_reset_required,
    User.email_verified_at,
)


_COUNT_FAILURE = (
    update(User)
    .where(User.deleted_at.is_(None))
    .values(failed_login_count=User.failed_login_count + 1)
    .returning(*_COUNTED_COLUMNS)
)
_COUNT_FAILURE_BY_EMAIL = _COUNT_FAILURE.where(User.email == bindparam("canonical"))
_COUNT_FAILURE_BY_ID = _COUNT_FAILURE.where(User.id == bindparam("uid"))


async def reserve_failure(
    db: AsyncSession, *, email: str | None = None, user_id: uuid.UUID | None = None
) -> CountedAccount | None:
    """Find the (not deleted) account and count this attempt as a failure, in one atomic
    statement; returns the account with the new count, or None when there is no such account.

    Counting up front means concurrent attempts each get a distinct number, so the ceiling
    holds exactly (CHK-BF-01, FI-RACE-03), and known and unknown accounts cost the same one
    statement. A correct password clears the count (`reset_failures`)."""
    conn = await db.connection()
    if user_id is not None:
        result = await conn.execute(_COUNT_FAILURE_BY_ID, {"uid": user_id})
    else:
        try:
            canonical = canonical_email(email or "")
        except InvalidEmail:
            return None
        result = await conn.execute(_COUNT_FAILURE_BY_EMAIL, {"canonical": canonical})
    row = result.first()
    return CountedAccount(*row) if row is not None else None


async def release_failure(db: AsyncSession, user_id: uuid.UUID) -> None:
    """Take back a reservation for an attempt that was never judged (hashing overloaded)."""
    await db.execute(
        update(User)
        .where(User.id == user_id, User.failed_login_count > 0)
        .values(failed_login_count=User.failed_login_count - 1)
    )


async def reset_failures(db: AsyncSession, user_id: uuid.UUID) -> None:
    """A correct password clears the consecutive-failure count (CHK-BF-05)."""
    await db.execute(update(User).where(User.id == user_id).values(failed_login_count=0))


def sign_in_refusal(user: User | CountedAccount, settings: Settings) -> AuthkeepError | None:
    """Why a user with a correct password still gets no session, if anything. Only ever
    answered after the password was verified (CHK-PW-06: no hint to password guessers)."""
    if user.password_reset_required:
        return PasswordResetRequired()
    if settings.require_verified_email and user.email_verified_at is None:
        return EmailNotVerified()
    return None


async def revoke_presented_session(db: AsyncSession, request: Request) -> None:
    """End the session whose cookie came with a sign-in: no pre-login token survives the
    sign-in, whoever chose it (CHK-SE-02, no fixation)."""
    token = read_cookie(request)
    if token:
        conn = await db.connection()
        await conn.execute(_REVOKE_PRESENTED, {"digest": token_digest(token), "now": utcnow()})


_REVOKE_PRESENTED = (
    update(Session)
    .where(Session.token_hash == bindparam("digest"), Session.revoked_at.is_(None))
    .values(revoked_at=bindparam("now"))
)


async def complete_sign_in(
    database_or_db: Database | AsyncSession,
    request: Request,
    response: Response | None,
    user: User | CountedAccount,
    settings: Settings,
    *,
    method: str = "password",
    attempt_id: uuid.UUID | None = None,
    detail: dict[str, Any] | None = None,
) -> SignInResult:
    """Start a session for a user who proved who they are (password, then MFA if enabled; or
    again, to re-authenticate).

    Ends any session cookie sent along, clears the failure count, records the sign-in, sets the
    session cookie on `response` (None: no cookie, for a bearer client re-authenticating) and
    returns the token for the JSON body. Callers hash (or rehash) before calling: this runs
    inside a unit of work. Refuses users disabled or deleted since their credentials were
    checked (`InvalidCredentials`) and users who must reset their password or confirm their
    email (that refusal): the error leaves the unit of work, which rolls back (`session_scope`
    does), so nothing of the attempt is kept. `attempt_id` is the attempt's audit row when one
    was already written (the password step); without it a new `auth.sign_in` row is added.
    Either way the row says `method`, plus `detail`. `result.user` and `result.session` are
    snapshots of the rows as written, not attached to the unit of work.
    """
    settled = {"method": method, **(detail or {})}
    if isinstance(database_or_db, Database):
        async with database_or_db.session_scope() as db:
            result = await _start_session(db, request, user.id, settings, settled, attempt_id)
    else:
        result = await _start_session(
            database_or_db, request, user.id, settings, settled, attempt_id
        )
    if response is not None:
        set_session_cookie(response, request, settings, result.token)
    return result


async def _start_session(
    db: AsyncSession,
    request: Request,
    user_id: uuid.UUID,
    settings: Settings,
    detail: dict[str, Any],
    attempt_id: uuid.UUID | None,
) -> SignInResult:
    user = await _mark_signed_in(db, user_id, settings.login_max_failures)
    if user is None:
        raise InvalidCredentials()
    refusal = sign_in_refusal(user, settings)
    if refusal is not None:
        raise refusal  # the unit of work rolls back: the count and last_login_at stay as they were
    await revoke_presented_session(db, request)
    token, session = await sessions.create(
        db, user, settings, ip=request_ip(request), user_agent=user_agent(request)
    )
    if attempt_id is not None:
        await finish_attempt(db, attempt_id, "success", detail, target=str(session.id))
    else:
        await audit.record(
            db,
            "auth.sign_in",
            "success",
            request=request,
            actor_id=user.id,
            actor=user.email,
            target=str(session.id),
            detail=detail,
        )
    return SignInResult(token, session, user)


_MARK_SIGNED_IN = (
    update(User)
    .where(
        User.id == bindparam("uid"),
        User.deleted_at.is_(None),
        User.disabled_at.is_(None),
        # Locked meanwhile (CHK-BF-01/06), e.g. by wrong passwords between an MFA challenge
        # and its second step. A password sign-in gets here with its count at most the max.
        User.failed_login_count <= bindparam("max_failures"),
    )
    .values(failed_login_count=0, last_login_at=bindparam("now"))
    .returning(*User.__table__.c)
)


async def _mark_signed_in(db: AsyncSession, user_id: uuid.UUID, max_failures: int) -> User | None:
    """Clear the failure count and set `last_login_at`, unless the account was disabled,
    deleted or locked meanwhile; returns the user as that statement left it (a snapshot, not
    attached to `db`), or None."""
    conn = await db.connection()
    values = {"uid": user_id, "now": utcnow(), "max_failures": max_failures}
    row = (await conn.execute(_MARK_SIGNED_IN, values)).first()
    return User(**row._asdict()) if row is not None else None


_SETTLE_ATTEMPT = (
    update(AuditEvent)
    .where(AuditEvent.id == bindparam("attempt"))
    .values(outcome=bindparam("new_outcome"), detail=bindparam("new_detail"))
)
_SETTLE_ATTEMPT_WITH_TARGET = _SETTLE_ATTEMPT.values(target=bindparam("new_target"))


async def finish_attempt(
    db: AsyncSession,
    attempt_id: uuid.UUID,
    outcome: str,
    detail: dict[str, Any] | None = None,
    *,
    target: str | None = None,
) -> None:
    """Settle a password attempt's audit row, written as a failure before the hash so that
    every refused branch does the same database work (CHK-EN-02)."""
    values = {"attempt": attempt_id, "new_outcome": outcome, "new_detail": detail}
    conn = await db.connection()
    if target is None:
        await conn.execute(_SETTLE_ATTEMPT, values)
    else:
        await conn.execute(_SETTLE_ATTEMPT_WITH_TARGET, {**values, "new_target": target})
    audit_logger.info("audit attempt=%s settled outcome=%s", attempt_id, outcome)
