"""Every flow that checks or sets a password: sign-up, sign-in, and the shared password check
used by change-password and delete-account.

No database connection is held while argon2 runs (FI-DOS-01): each flow is short units of work
around the hash — read the user and reserve a failure → close; verify/hash in the hashing pool;
→ a new unit of work records the outcome. Unknown, disabled, locked and password-less accounts
spend the same verification work against a dummy hash, and every one of them gets the same
`invalid_credentials` answer (CHK-EN-01/02).

Throttling (CHK-BF-01/02/05/07): each attempt is first counted as a failure — per client IP
bucket (`core.clientip.limiter_key`, IPv6 by /64) in a sliding one-minute window, per sign-in
identifier in its progressive-delay run (`users.delays`: an attempt made before the run's wait
is over is refused before any lookup or hashing), and per account by one atomic increment of
`users.failed_login_count`. A correct password takes the counts back. An account whose count
passes `login_max_failures` is refused until its password is reset. Every refusal by a limiter
is counted in `core.metrics`, and so is every sign-in's verdict.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta

from fastapi import Request, Response
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from authkeep.audit import service as audit
from authkeep.config import Settings
from authkeep.core.clientip import limiter_key
from authkeep.core.db import Database
from authkeep.core.metrics import metrics_for
from authkeep.core.ratelimit import limiter_for
from authkeep.core.request_context import request_ip
from authkeep.core.security import HashingOverloaded, PasswordHashing
from authkeep.errors import AuthkeepError, RateLimited
from authkeep.mfa import service as mfa
from authkeep.users import one_time
from authkeep.users import service as users
from authkeep.users.delays import Schedule, delay_key, delays_for, retry_after
from authkeep.users.models import User
from authkeep.users.passwords import (
    ensure_not_too_long,
    hash_password,
    validate,
    verify_password,
)

IP_WINDOW_SECONDS = 60
MFA_CHALLENGE = "mfa_challenge"
MFA_CHALLENGE_TTL = timedelta(minutes=5)


class Throttled(RateLimited):
    """Refused by a limiter before any check; `reason` goes in the audit row."""

    detail = "Too many attempts from your network. Wait before trying again."
    reason = "ip"


class AccountDelayed(Throttled):
    """Refused because the identifier's progressive wait is not over (CHK-BF-02). The same for
    every address, registered or not (CHK-EN-03)."""

    detail = "Too many failed attempts for this account. Wait before trying again."
    reason = "account_delay"


@dataclass(frozen=True)
class PasswordCheck:
    """The verdict on one password attempt. `user` is the account as counting the attempt left
    it (or None); `attempt_id` is the attempt's audit row, written as a failure before the
    hash."""

    user: users.CountedAccount | None
    ok: bool
    reason: str
    attempt_id: uuid.UUID
    new_hash: str | None = None


@dataclass(frozen=True)
class MfaChallenge:
    """Password accepted; a second factor is needed. The token is good for one MFA step."""

    mfa_token: str


def hashing(request: Request) -> PasswordHashing:
    passwords: PasswordHashing = request.app.state.passwords
    return passwords


def ip_bucket(request: Request, flow: str) -> str:
    return f"{flow}:{limiter_key(request_ip(request))}"


async def check_password(
    database: Database,
    request: Request,
    settings: Settings,
    password: str,
    *,
    action: str,
    email: str | None = None,
    user_id: uuid.UUID | None = None,
) -> PasswordCheck:
    """Throttle, count, audit and verify one password attempt for the account named by
    `email` or `user_id`. Raises `Throttled` (429) when the client's network has used up its
    failures, `AccountDelayed` (429) when the identifier's progressive wait is not over.

    The delay run is the email's: callers that name the account by `user_id` pass its email
    too (else it is read first), so every flow shares the sign-in identifier's run.

    Every branch does the same work: one unit of work before the hash (look up, count the
    failure up front, write the audit row as a failure) and one argon2 verification (against a
    dummy hash when the account is unknown, locked, disabled or has no password). Refusals
    need nothing after the hash; only a correct password updates the rows again.
    """
    limiter = limiter_for(request.app)
    bucket = ip_bucket(request, "password")
    decision = await limiter.hit(bucket, settings.login_ip_failures_per_minute, IP_WINDOW_SECONDS)
    if not decision.allowed:
        metrics_for(request.app).refused("password_ip")
        raise Throttled(decision.retry_after)
    try:
        run = await _delay_run(database, settings, email, user_id)
        await _admit(request, settings, run)
    except BaseException:
        await limiter.refund(bucket)
        raise
    delays = delays_for(request.app)
    try:
        user, refusal, attempt_id = await _open_attempt(
            database, request, settings, action, email, user_id
        )
    except BaseException:
        await limiter.refund(bucket)
        await delays.release(run)
        raise
    passwords = hashing(request)
    stored = user.password_hash if user is not None and refusal is None else None
    try:
        matches, needs_rehash = await verify_password(passwords, stored, password)
        new_hash = await hash_password(passwords, password) if matches and needs_rehash else None
    except HashingOverloaded:
        await limiter.refund(bucket)
        await delays.release(run)
        await _abandon_attempt(database, user, attempt_id)
        raise
    if refusal is not None or not matches:
        return PasswordCheck(user, False, refusal or "wrong_password", attempt_id)
    await limiter.refund(bucket)
    await delays.clear(run)  # a correct password ends the run of failures (CHK-BF-05)
    return PasswordCheck(user, True, "ok", attempt_id, new_hash)


async def _delay_run(
    database: Database, settings: Settings, email: str | None, user_id: uuid.UUID | None
) -> str:
    """The key of the delay run this attempt belongs to: the email's."""
    if email is None and user_id is not None:
        async with database.session_scope() as db:
            account = await users.get(db, user_id)
        email = account.email if account is not None else f"user:{user_id}"
    return delay_key(settings, email or "")


async def _admit(request: Request, settings: Settings, run: str) -> None:
    """Count the attempt in its delay run, or refuse it while the run's wait is not over."""
    wait = await delays_for(request.app).admit(run, Schedule.of(settings))
    if wait > 0:
        metrics_for(request.app).refused("account_delay")
        raise AccountDelayed(retry_after(wait))


async def _open_attempt(
    database: Database,
    request: Request,
    settings: Settings,
    action: str,
    email: str | None,
    user_id: uuid.UUID | None,
) -> tuple[users.CountedAccount | None, str | None, uuid.UUID]:
    async with database.session_scope() as db:
        user = await users.reserve_failure(db, email=email, user_id=user_id)
        refusal: str | None = "unknown_email"
        if user is not None:
            refusal = _refusal_before_password(user, settings)
        event = await audit.record(
            db,
            action,
            "failure",
            request=request,
            actor_id=user.id if user else None,
            actor=user.email if user else email,
            detail={"reason": refusal or "wrong_password"},
        )
        await db.flush()
        return user, refusal, event.id


async def _abandon_attempt(
    database: Database, user: users.CountedAccount | None, attempt_id: uuid.UUID
) -> None:
    """Never judged (hashing overloaded): the account does not pay for our overload."""
    async with database.session_scope() as db:
        if user is not None:
            await users.release_failure(db, user.id)
        await users.finish_attempt(db, attempt_id, "failure", {"reason": "overloaded"})


def _refusal_before_password(user: users.CountedAccount, settings: Settings) -> str | None:
    if user.failed_login_count > settings.login_max_failures:
        return "locked"
    if user.disabled_at is not None:
        return "disabled"
    if user.password_hash is None:
        return "no_password"
    return None


async def record_failure(
    database: Database,
    request: Request,
    action: str,
    *,
    outcome: str = "failure",
    reason: str,
    user: User | None = None,
    actor: str | None = None,
) -> None:
    """One audit row for a refused attempt, in its own unit of work (never the password)."""
    async with database.session_scope() as db:
        await audit.record(
            db,
            action,
            outcome,
            request=request,
            actor_id=user.id if user else None,
            actor=user.email if user else actor,
            detail={"reason": reason},
        )


async def check_own_password(
    database: Database,
    request: Request,
    settings: Settings,
    user: User,
    password: str,
    *,
    action: str,
) -> PasswordCheck:
    """A signed-in user's password, checked like any attempt: size cap, throttled, counted
    per account and in the email's delay run, audited as `action`. A throttled attempt is
    recorded, then `Throttled` raised; what a wrong password answers is the caller's choice."""
    ensure_not_too_long(password, settings)
    try:
        return await check_password(
            database, request, settings, password, action=action, email=user.email, user_id=user.id
        )
    except Throttled as refused:
        await record_failure(
            database, request, action, outcome="throttled", reason=refused.reason, user=user
        )
        raise


async def sign_in(
    database: Database,
    request: Request,
    response: Response,
    settings: Settings,
    email: str,
    password: str,
) -> users.SignInResult | MfaChallenge:
    """Sign in with email and password: a new session (cookie on `response`, token returned),
    or an MFA challenge. One answer, `invalid_credentials`, for every kind of refusal."""
    ensure_not_too_long(password, settings)
    metrics = metrics_for(request.app)
    try:
        check = await check_password(
            database, request, settings, password, action="auth.sign_in", email=email
        )
    except Throttled as refused:
        metrics.sign_in("throttled")
        await record_failure(
            database,
            request,
            "auth.sign_in",
            outcome="throttled",
            reason=refused.reason,
            actor=email,
        )
        raise
    metrics.sign_in("success" if check.ok else "failure")
    if not check.ok or check.user is None:
        raise users.InvalidCredentials()  # the attempt's audit row already says why
    return await _after_password(database, request, response, settings, check.user, check)


async def _after_password(
    database: Database,
    request: Request,
    response: Response,
    settings: Settings,
    user: users.CountedAccount,
    check: PasswordCheck,
) -> users.SignInResult | MfaChallenge:
    """One unit of work settles a correct password: a session (the common case), an MFA
    challenge, or the refusal that only a correct password may learn."""
    refusal: AuthkeepError | None
    async with database.session_scope() as db:
        if check.new_hash is not None:
            await _rehash(db, user, check.new_hash)
        refusal = users.sign_in_refusal(user, settings)
        if refusal is None and not await mfa.is_enabled(db, user.id):
            # Clears the failure count itself, or rolls back if the account changed meanwhile.
            return await users.complete_sign_in(
                db, request, response, user, settings, attempt_id=check.attempt_id
            )
        await users.reset_failures(db, user.id)
        if refusal is None:
            token = await one_time.issue(db, MFA_CHALLENGE, MFA_CHALLENGE_TTL, user_id=user.id)
            await users.finish_attempt(db, check.attempt_id, "mfa_required", {"method": "password"})
            return MfaChallenge(token)
        await users.finish_attempt(db, check.attempt_id, "failure", {"reason": refusal.code})
    raise refusal


async def _rehash(db: AsyncSession, user: users.CountedAccount, new_hash: str) -> None:
    """Upgrade a hash made with older parameters (CHK-PS-02). Only if it is still the hash we
    verified, so a concurrent password change is never overwritten."""
    await (await db.connection()).execute(
        update(User)
        .where(User.id == user.id, User.password_hash == user.password_hash)
        .values(password_hash=new_hash)
    )


async def sign_up(
    database: Database,
    request: Request,
    settings: Settings,
    email: str,
    password: str,
    name: str | None,
) -> None:
    """Create an account, or silently do nothing when the email is taken: both answer the same
    and cost one hash (CHK-EN-01). Sign-up never signs in; the client signs in next."""
    validate(password, settings, email=email)
    limiter = limiter_for(request.app)
    decision = await limiter.hit(
        ip_bucket(request, "sign-up"), settings.login_ip_failures_per_minute, IP_WINDOW_SECONDS
    )
    if not decision.allowed:
        metrics_for(request.app).refused("sign_up_ip")
        await record_failure(
            database, request, "auth.sign_up", outcome="throttled", reason="ip", actor=email
        )
        raise Throttled(decision.retry_after)
    password_hash = await hash_password(hashing(request), password)
    async with database.session_scope() as db:
        # Always the same statements: an INSERT in a savepoint that the unique index refuses
        # for a taken email. No lookup first, so both cases cost the same (CHK-EN-02).
        try:
            created = await users.create_user(db, email, password_hash=password_hash, name=name)
        except users.EmailTaken:
            created = None
        # An email flow may later tell the owner of a taken address about this attempt.
        await audit.record(
            db,
            "auth.sign_up",
            "success" if created else "failure",
            request=request,
            actor_id=created.id if created else None,
            actor=email,
            detail=None if created else {"reason": "email_taken"},
        )
