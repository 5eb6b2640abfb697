"""Re-authentication (CHK-SE-06, CHK-SE-02): a signed-in user whose session is no longer fresh
proves who they are again, without signing out, and gets a fresh session in its place.

The password goes through `signin.check_password` like any attempt: throttled per network,
counted per account up front, audited (`auth.reauthenticate`), argon2 in the hashing pool with
no connection held. A user with MFA on also sends a TOTP or recovery code, checked by
`mfa.service` inside the MFA routes' per-account budget of wrong codes (`code_attempt`).

On success the session is rotated in one unit of work: the old session is ended by a
conditional UPDATE, then `users.service.complete_sign_in` starts the new one (fresh:
`authenticated_at` is now). Only one caller can end the old session, so of any number of
concurrent re-authentications of one session exactly one succeeds; the others get
`401 unauthorized` (the session they presented has ended), their unit of work rolls back (a
code they sent is not spent), and their correct password is not left counted as a failure.
"""

from __future__ import annotations

import uuid

from fastapi import Request, Response
from sqlalchemy.ext.asyncio import AsyncSession

from authkeep.config import Settings
from authkeep.core.db import Database
from authkeep.errors import AuthkeepError, Unauthorized
from authkeep.mfa import service as mfa
from authkeep.sessions import service as sessions
from authkeep.sessions.service import ActiveSession
from authkeep.users import service as users
from authkeep.users import signin
from authkeep.users.models import User
from authkeep.users.passwords import ensure_not_too_long
from authkeep.users.schemas import Reauthentication

ACTION = "auth.reauthenticate"


class MfaCodeRequired(AuthkeepError):
    code = "mfa_code_required"
    status_code = 403
    detail = (
        "Two-step sign-in is on for this account: send `code` (from your authenticator app) or "
        "`recovery_code` with your password."
    )


class SessionEnded(Unauthorized):
    detail = "Your session has ended or is not valid. Sign in again."


async def reauthenticate(
    database: Database,
    request: Request,
    response: Response | None,
    settings: Settings,
    principal: ActiveSession,
    body: Reauthentication,
) -> users.SignInResult:
    """Check the password (and second factor), end `principal`'s session and start a fresh
    one; sets the cookie on `response` unless it is None. Raises `InvalidCredentials` for a
    wrong password, `MfaCodeRequired` / `MfaNotEnabled` for a code that must / cannot come
    along, the MFA routes' `MfaCodeRefused` for a wrong code, `SessionEnded` when the session
    ended meanwhile. The request's own unit of work must be released first (argon2 runs)."""
    # Imported here: `mfa.routes` imports `users.routes`, which imports this module.
    from authkeep.mfa.routes import MfaCodeRefused, code_attempt

    user = principal.user
    async with database.session_scope() as db:
        has_mfa = await mfa.is_enabled(db, user.id)
    sent_code = body.code is not None or body.recovery_code is not None
    if has_mfa and not sent_code:
        raise MfaCodeRequired()
    if sent_code and not has_mfa:
        raise mfa.MfaNotEnabled()
    ensure_not_too_long(body.password, settings)
    if not has_mfa:
        check = await _check_password(database, request, settings, user, body.password)
        result = await _rotate(database, request, response, settings, principal, check, body)
    else:
        async with code_attempt(database, request, user, ACTION) as verdict:
            check = await _check_password(database, request, settings, user, body.password)
            result = await _rotate(database, request, response, settings, principal, check, body)
            verdict.ok = result is not None
    if result is None:
        raise MfaCodeRefused()
    return result


async def _check_password(
    database: Database, request: Request, settings: Settings, user: User, password: str
) -> signin.PasswordCheck:
    check = await signin.check_own_password(
        database, request, settings, user, password, action=ACTION
    )
    if not check.ok:
        raise users.InvalidCredentials()  # the attempt's audit row already says why
    return check


async def _rotate(
    database: Database,
    request: Request,
    response: Response | None,
    settings: Settings,
    principal: ActiveSession,
    check: signin.PasswordCheck,
    body: Reauthentication,
) -> users.SignInResult | None:
    """After a correct password: spend the code (if MFA), end the old session, start the new
    one, all in one unit of work. None when the code is wrong (that is recorded)."""
    user_id, old_id = principal.user.id, principal.session.id
    detail: dict[str, str] = {"replaced_session": str(old_id)}
    try:
        async with database.session_scope() as db:
            if body.code is not None or body.recovery_code is not None:
                factor = await _use_code(db, user_id, body, settings)
                if factor is None:
                    await users.reset_failures(db, user_id)  # the password was right
                    reason = {"reason": "wrong_code"}
                    await users.finish_attempt(db, check.attempt_id, "failure", reason)
                    return None
                detail["factor"] = factor
            if not await sessions.revoke(db, user_id, old_id):
                raise SessionEnded()  # a concurrent re-authentication or a sign-out won
            return await users.complete_sign_in(
                db,
                request,
                response,
                principal.user,
                settings,
                method="mfa" if "factor" in detail else "password",
                attempt_id=check.attempt_id,
                detail=detail,
            )
    except SessionEnded:
        await _settle_lost(database, user_id, check.attempt_id)
        raise


async def _use_code(
    db: AsyncSession, user_id: uuid.UUID, body: Reauthentication, settings: Settings
) -> mfa.Factor | None:
    """The MFA routes' rule: `recovery_code` is one; `code` is a TOTP code when it is six
    digits, else it is tried as a recovery code."""
    if body.recovery_code is not None:
        spent = await mfa.use_recovery_code(db, user_id, body.recovery_code, settings)
        return "recovery_code" if spent else None
    return await mfa.use_code(db, user_id, body.code or "", settings)


async def _settle_lost(database: Database, user_id: uuid.UUID, attempt_id: uuid.UUID) -> None:
    """The password was right but the session ended first: the attempt is not a wrong guess."""
    async with database.session_scope() as db:
        await users.reset_failures(db, user_id)
        await users.finish_attempt(db, attempt_id, "failure", {"reason": "session_ended"})
