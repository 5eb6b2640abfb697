"""`/api/auth/mfa` (TOTP enrolment, status, disable, recovery codes) and the second sign-in
step, `/api/auth/sign-in/mfa`.

Wrong codes are throttled, and the count is taken before the code is checked, so concurrent
guesses cannot exceed it: at most `ACCOUNT_FAILURES` per account in a sliding
`ACCOUNT_WINDOW_SECONDS` (every route that checks a code shares this budget), and at most
`CHALLENGE_FAILURES` per sign-in challenge, after which the challenge is spent. A correct code
gives its budget slot back. Both counts live in the in-process limiter (`core.ratelimit`); the
challenge is also spent in the database, so it is dead in every process.

Routes that audit refusals release the request unit of work first and write in units of work
of their own, because a refusal raises and would roll the request's audit row back. No
connection is held while argon2 checks the password for disable.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request, Response
from sqlalchemy.ext.asyncio import AsyncSession

from authkeep.audit import service as audit
from authkeep.config import Settings
from authkeep.core.db import Database
from authkeep.core.deps import DB, AppDatabase, AppSettings
from authkeep.core.metrics import metrics_for
from authkeep.core.ratelimit import limiter_for
from authkeep.errors import AuthkeepError, RateLimited
from authkeep.mfa import service as mfa
from authkeep.mfa.schemas import (
    MfaDisable,
    MfaSignIn,
    MfaStatusRead,
    RecoveryCodesCreated,
    RecoveryCodesRegenerate,
    TotpConfirm,
    TotpEnrolmentCreated,
)
from authkeep.sessions import service as sessions
from authkeep.sessions.deps import CurrentSession, FreshSession
from authkeep.users import one_time, signin
from authkeep.users import service as users
from authkeep.users.account import InvalidCurrentPassword
from authkeep.users.models import User
from authkeep.users.passwords import PasswordRejected, normalize
from authkeep.users.routes import AuthRoute, ensure_same_site_login
from authkeep.users.schemas import SessionCreated

ACCOUNT_FAILURES = 10
ACCOUNT_WINDOW_SECONDS = 15 * 60
CHALLENGE_FAILURES = 5
CHALLENGE_WINDOW_SECONDS = int(signin.MFA_CHALLENGE_TTL.total_seconds())
SIGN_IN_MFA = "auth.sign_in.mfa"


class InvalidMfaCode(AuthkeepError):
    """Sign-in: the code is wrong; the challenge is still good for another try."""

    code = "invalid_mfa_code"
    status_code = 401
    detail = "The code is not correct."


class MfaChallengeInvalid(AuthkeepError):
    code = "mfa_challenge_invalid"
    status_code = 401
    detail = "This sign-in step has expired or was already used. Sign in again."


class MfaCodeRefused(AuthkeepError):
    """Signed-in routes: the code is wrong (the session itself is fine, hence not 401)."""

    code = "invalid_mfa_code"
    status_code = 403
    detail = "The code is not correct."


class MfaThrottled(RateLimited):
    detail = "Too many wrong codes. Wait before trying again."


TOO_MANY_CODES = "Too many wrong codes for this sign-in. Sign in again."

router = APIRouter(prefix="/api/auth", tags=["auth"], route_class=AuthRoute)


@dataclass
class Verdict:
    ok: bool = False


def _account_key(user_id: uuid.UUID) -> str:
    return f"mfa:{user_id}"


@asynccontextmanager
async def code_attempt(
    database: Database, request: Request, user: User, action: str
) -> AsyncIterator[Verdict]:
    """One code check inside the account's budget of wrong codes. The slot is taken up front
    and given back when the block sets `ok`, or raises before judging (nothing was guessed)."""
    limiter = limiter_for(request.app)
    key = _account_key(user.id)
    decision = await limiter.hit(key, ACCOUNT_FAILURES, ACCOUNT_WINDOW_SECONDS)
    if not decision.allowed:
        metrics_for(request.app).refused("mfa")
        await signin.record_failure(
            database, request, action, outcome="throttled", reason="too_many_codes", user=user
        )
        raise MfaThrottled(decision.retry_after)
    verdict = Verdict()
    try:
        yield verdict
    except BaseException:
        await limiter.refund(key)
        raise
    if verdict.ok:
        await limiter.refund(key)


async def _audit(
    db: AsyncSession,
    request: Request,
    user: User,
    action: str,
    outcome: str,
    detail: dict[str, Any] | None = None,
) -> None:
    """One audit row; codes and secrets never go in `detail`."""
    await audit.record(
        db, action, outcome, request=request, actor_id=user.id, actor=user.email, detail=detail
    )


@router.get("/mfa", response_model=MfaStatusRead)
async def read_mfa(principal: CurrentSession, db: DB) -> MfaStatusRead:
    """Whether two-step sign-in is on, since when, and how many recovery codes are left."""
    return MfaStatusRead.of(await mfa.status(db, principal.user.id))


@router.post("/mfa/totp/enroll", status_code=201, response_model=TotpEnrolmentCreated)
async def enroll_totp(
    principal: FreshSession, db: DB, request: Request, settings: AppSettings
) -> TotpEnrolmentCreated:
    """Start TOTP enrolment (fresh session): a new seed and its `otpauth://` URI, shown once.
    Replaces an unconfirmed enrolment; refused with 409 while MFA is on."""
    user = principal.user
    enrolment = await mfa.start_enrolment(db, user.id, user.email, settings)
    await _audit(db, request, user, "auth.mfa.enroll", "success")
    return TotpEnrolmentCreated(secret=enrolment.secret, otpauth_uri=enrolment.otpauth_uri)


@router.post("/mfa/totp/confirm", response_model=RecoveryCodesCreated)
async def confirm_totp(
    body: TotpConfirm,
    principal: CurrentSession,
    db: DB,
    request: Request,
    database: AppDatabase,
    settings: AppSettings,
) -> RecoveryCodesCreated:
    """Turn MFA on with a code from the new authenticator; returns 10 recovery codes (once).
    Every other session of the account ends: none of them passed a second step."""
    await db.commit()  # refusals are audited in a unit of work of their own
    user = principal.user
    async with code_attempt(database, request, user, "auth.mfa.confirm") as verdict:
        async with database.session_scope() as work:
            codes = await mfa.confirm_enrolment(work, user.id, body.code, settings)
            detail: dict[str, Any] = {"reason": "wrong_code"}
            if codes is not None:  # sessions of an MFA account passed MFA (CHK-AC-06)
                ended = await sessions.revoke_all(work, user.id, except_id=principal.session.id)
                detail = {"sessions_ended": ended}
            outcome = "failure" if codes is None else "success"
            await _audit(work, request, user, "auth.mfa.confirm", outcome, detail)
        verdict.ok = codes is not None
    if codes is None:
        raise MfaCodeRefused()
    return RecoveryCodesCreated(recovery_codes=codes)


@router.post("/mfa/recovery-codes", response_model=RecoveryCodesCreated)
async def regenerate_recovery_codes(
    body: RecoveryCodesRegenerate,
    principal: FreshSession,
    db: DB,
    request: Request,
    database: AppDatabase,
    settings: AppSettings,
) -> RecoveryCodesCreated:
    """New recovery codes (fresh session and a current TOTP code); the old ones stop working."""
    await db.commit()
    user = principal.user
    action = "auth.mfa.recovery_codes"
    async with code_attempt(database, request, user, action) as verdict:
        async with database.session_scope() as work:
            await mfa.require_enabled(work, user.id)
            codes = None
            if await mfa.use_totp(work, user.id, body.code, settings):
                codes = await mfa.replace_recovery_codes(work, user.id, settings)
            outcome, detail = ("success", None) if codes else ("failure", {"reason": "wrong_code"})
            await _audit(work, request, user, action, outcome, detail)
        verdict.ok = codes is not None
    if codes is None:
        raise MfaCodeRefused()
    return RecoveryCodesCreated(recovery_codes=codes)


@router.post("/mfa/totp/disable", response_model=MfaStatusRead)
async def disable_totp(
    body: MfaDisable,
    principal: FreshSession,
    db: DB,
    request: Request,
    database: AppDatabase,
    settings: AppSettings,
) -> MfaStatusRead:
    """Turn MFA off (fresh session, password, and a TOTP or recovery code). The factor and all
    recovery codes are deleted. Refused while the password is only long enough with MFA."""
    await db.commit()  # release the connection before argon2 runs
    user = principal.user
    action = "auth.mfa.disable"
    async with database.session_scope() as work:
        await mfa.require_enabled(work, user.id)
    async with code_attempt(database, request, user, action) as verdict:
        attempt_id = await _check_password(database, request, settings, user, body.password)
        too_short = len(normalize(body.password)) < settings.password_min_length
        async with database.session_scope() as work:
            await users.reset_failures(work, user.id)  # the password was right
            kind = None if too_short else await _use_any_code(work, user.id, body, settings)
            if kind is not None:
                await mfa.remove(work, user.id)
            reason = "password_too_short" if too_short else "wrong_code"
            detail = {"factor": kind} if kind else {"reason": reason}
            await users.finish_attempt(work, attempt_id, "success" if kind else "failure", detail)
        verdict.ok = kind is not None or too_short  # a short password judged no code
    if too_short:
        raise _password_too_short(settings)
    if kind is None:
        raise MfaCodeRefused()
    return MfaStatusRead(enabled=False, confirmed_at=None, recovery_codes_left=0)


async def _check_password(
    database: Database, request: Request, settings: Settings, user: User, password: str
) -> uuid.UUID:
    """The signed-in user's password, checked like change-password checks it; returns the
    attempt's audit row to settle."""
    check = await signin.check_own_password(
        database, request, settings, user, password, action="auth.mfa.disable"
    )
    if not check.ok:
        raise InvalidCurrentPassword()
    return check.attempt_id


async def _use_any_code(
    db: AsyncSession, user_id: uuid.UUID, body: MfaDisable, settings: Settings
) -> mfa.Factor | None:
    if body.recovery_code is not None:
        ok = await mfa.use_recovery_code(db, user_id, body.recovery_code, settings)
        return "recovery_code" if ok else None
    return await mfa.use_code(db, user_id, body.code or "", settings)


def _password_too_short(settings: Settings) -> PasswordRejected:
    """MFA allows shorter passwords (`password_min_length_with_mfa`); turning it off must not
    leave a single factor below the plain minimum, so the user changes the password first."""
    return PasswordRejected(
        "password_too_short",
        f"Your password is shorter than {settings.password_min_length} characters, which is "
        "allowed only with two-step sign-in. Change your password first.",
    )


@router.post("/sign-in/mfa", response_model=SessionCreated)
async def complete_mfa_sign_in(
    body: MfaSignIn,
    request: Request,
    response: Response,
    database: AppDatabase,
    settings: AppSettings,
) -> SessionCreated:
    """The second sign-in step: the `mfa_token` from sign-in and a TOTP or recovery code. A
    wrong code keeps the challenge for another try (at most 5)."""
    ensure_same_site_login(request, settings)
    result = await second_step(database, request, response, settings, body)
    return SessionCreated.of(result, settings)


async def second_step(
    database: Database, request: Request, response: Response, settings: Settings, body: MfaSignIn
) -> users.SignInResult:
    """Check the code, then consume the challenge in the same unit of work: a wrong code never
    burns the challenge, and a right one is spent together with it (or not at all)."""
    async with database.session_scope() as db:
        challenge = await mfa.live_challenge(db, body.mfa_token, signin.MFA_CHALLENGE)
        user_id = challenge.user_id if challenge else None
        user = await users.get(db, user_id) if user_id else None
    if challenge is None or user is None:
        await signin.record_failure(database, request, SIGN_IN_MFA, reason="invalid_challenge")
        raise MfaChallengeInvalid()
    limiter = limiter_for(request.app)
    tries_key = f"mfa-challenge:{challenge.id}"
    async with code_attempt(database, request, user, SIGN_IN_MFA) as verdict:
        tries = await limiter.hit(tries_key, CHALLENGE_FAILURES, CHALLENGE_WINDOW_SECONDS)
        if not tries.allowed:
            metrics_for(request.app).refused("mfa_challenge")
            await _end_challenge(database, request, user, body.mfa_token)
            raise MfaChallengeInvalid(TOO_MANY_CODES)
        result = await _judge_code(
            database, request, response, settings, user, body, tries.remaining
        )
        verdict.ok = result is not None
    if result is None:
        raise MfaChallengeInvalid(TOO_MANY_CODES) if tries.remaining == 0 else InvalidMfaCode()
    await limiter.reset(tries_key)
    return result


async def _judge_code(
    database: Database,
    request: Request,
    response: Response,
    settings: Settings,
    user: User,
    body: MfaSignIn,
    tries_left: int,
) -> users.SignInResult | None:
    async with database.session_scope() as db:
        kind = await mfa.use_code(db, user.id, body.code, settings)
        if kind is None:
            await _audit(db, request, user, SIGN_IN_MFA, "failure", {"reason": "wrong_code"})
            if tries_left == 0:
                await one_time.consume(db, body.mfa_token, signin.MFA_CHALLENGE)
            return None
        if await one_time.consume(db, body.mfa_token, signin.MFA_CHALLENGE) is None:
            raise MfaChallengeInvalid()  # a concurrent step won; the code is not spent
        await _audit(db, request, user, SIGN_IN_MFA, "success", {"factor": kind})
        return await users.complete_sign_in(db, request, response, user, settings, method="mfa")


async def _end_challenge(database: Database, request: Request, user: User, token: str) -> None:
    async with database.session_scope() as db:
        await one_time.consume(db, token, signin.MFA_CHALLENGE)
        await _audit(db, request, user, SIGN_IN_MFA, "failure", {"reason": "too_many_codes"})
