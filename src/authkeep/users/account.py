"""Signed-in account actions that need the current password: change password and delete
account (CHK-PW-05, CHK-PW-09, CHK-SE-05). Routes check for a fresh session (CHK-SE-06) and
release their request unit of work before calling these, so no connection is held while
argon2 runs. A wrong current password counts as a failed attempt, per account, per network and
in the progressive-delay run of the account's email (`users.delays`).
"""

from __future__ import annotations

import uuid

from fastapi import Request

from authkeep.config import Settings
from authkeep.core.db import Database
from authkeep.errors import AuthkeepError
from authkeep.keys import service as keys
from authkeep.keys.cache import invalidations_for
from authkeep.mfa import service as mfa
from authkeep.sessions.service import ActiveSession
from authkeep.users import service as users
from authkeep.users.passwords import ensure_not_too_long, hash_password, validate
from authkeep.users.signin import check_own_password, hashing


class InvalidCurrentPassword(AuthkeepError):
    code = "invalid_current_password"
    status_code = 403
    detail = "The current password is not correct."


async def _confirm_password(
    database: Database,
    request: Request,
    settings: Settings,
    principal: ActiveSession,
    password: str,
    action: str,
) -> uuid.UUID:
    """Check the signed-in user's password; returns the attempt's audit row to settle."""
    check = await check_own_password(
        database, request, settings, principal.user, password, action=action
    )
    if not check.ok:
        raise InvalidCurrentPassword()
    return check.attempt_id


async def change_password(
    database: Database,
    request: Request,
    settings: Settings,
    principal: ActiveSession,
    current_password: str,
    new_password: str,
) -> int:
    """Check the current password, set the new one, end every other session. Returns how many
    sessions ended. The policy minimum is the MFA one when the user has MFA."""
    user = principal.user
    async with database.session_scope() as db:
        has_mfa = await mfa.is_enabled(db, user.id)
    ensure_not_too_long(current_password, settings)
    validate(new_password, settings, email=user.email, has_mfa=has_mfa)
    attempt_id = await _confirm_password(
        database, request, settings, principal, current_password, "auth.password_change"
    )
    new_hash = await hash_password(hashing(request), new_password)
    async with database.session_scope() as db:
        ended = await users.set_password(
            db, user.id, new_hash, keep_session_id=principal.session.id
        )
        await users.finish_attempt(db, attempt_id, "success", {"sessions_ended": ended})
    return ended


async def delete_own_account(
    database: Database,
    request: Request,
    settings: Settings,
    principal: ActiveSession,
    password: str,
) -> int:
    """Check the password, then tombstone the account, end all its sessions and revoke all its
    API keys."""
    user = principal.user
    attempt_id = await _confirm_password(
        database, request, settings, principal, password, "auth.account_delete"
    )
    async with database.session_scope() as db:
        ended = await users.delete_account(db, user.id)
        revoked = await keys.revoke_all_for_user(db, user.id)
        detail = {"sessions_ended": ended, "keys_revoked": revoked}
        await users.finish_attempt(db, attempt_id, "success", detail)
    # Committed: drop the user's keys from every node's verify cache.
    await invalidations_for(request.app).user_changed(user.id)
    return ended
