"""TOTP multi-factor authentication and recovery codes.

A user has at most one factor (`mfa_factors.user_id` is unique). Enrolment stores it
unconfirmed; a correct code confirms it and issues recovery codes; from then on sign-in needs a
second step. Seeds are encrypted at rest (`mfa.crypto`).

Every code is single use, decided by one conditional UPDATE, so under any number of concurrent
attempts exactly one wins on SQLite and PostgreSQL alike (RELIABILITY FI-RACE-01):
- a TOTP code moves `last_used_step` forward (`IS NULL OR < :step`): the same code twice, or a
  code of an older step than the last one accepted, is refused;
- a recovery code sets `used_at` where it is still NULL. Its row is found by the keyed digest
  or, for codes issued before digests were keyed, the legacy one, in the same statement.
Functions here add and flush; the caller's unit of work commits.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from authkeep.config import Settings
from authkeep.core.models import utcnow
from authkeep.core.security import token_digest
from authkeep.errors import Conflict
from authkeep.mfa import crypto
from authkeep.mfa.models import MfaFactor, RecoveryCode
from authkeep.users.models import OneTimeToken

Factor = Literal["totp", "recovery_code"]


class MfaAlreadyEnabled(Conflict):
    code = "mfa_already_enabled"
    detail = "Two-step sign-in is already on. Turn it off first to enrol a new authenticator."


class MfaNotPending(Conflict):
    code = "mfa_not_pending"
    detail = "There is no authenticator enrolment to confirm. Start one first."


class MfaNotEnabled(Conflict):
    code = "mfa_not_enabled"
    detail = "Two-step sign-in is not on for this account."


@dataclass(frozen=True)
class Enrolment:
    """A new, unconfirmed factor: the seed in plaintext exists only here and in the response."""

    secret: str
    otpauth_uri: str


@dataclass(frozen=True)
class MfaStatus:
    enabled: bool
    confirmed_at: datetime | None
    recovery_codes_left: int


async def is_enabled(db: AsyncSession, user_id: uuid.UUID) -> bool:
    """True when the user has a confirmed TOTP factor: sign-in then needs a second step."""
    found = await db.scalar(
        select(MfaFactor.id).where(
            MfaFactor.user_id == user_id, MfaFactor.confirmed_at.is_not(None)
        )
    )
    return found is not None


async def _factor(db: AsyncSession, user_id: uuid.UUID, *, confirmed: bool) -> MfaFactor | None:
    state = MfaFactor.confirmed_at.is_not(None) if confirmed else MfaFactor.confirmed_at.is_(None)
    return await db.scalar(select(MfaFactor).where(MfaFactor.user_id == user_id, state))


async def status(db: AsyncSession, user_id: uuid.UUID) -> MfaStatus:
    """Whether MFA is on, since when, and how many recovery codes are still unused."""
    factor = await _factor(db, user_id, confirmed=True)
    left = await db.scalar(
        select(func.count())
        .select_from(RecoveryCode)
        .where(RecoveryCode.user_id == user_id, RecoveryCode.used_at.is_(None))
    )
    return MfaStatus(factor is not None, factor.confirmed_at if factor else None, int(left or 0))


async def start_enrolment(
    db: AsyncSession, user_id: uuid.UUID, email: str, settings: Settings
) -> Enrolment:
    """Store a new unconfirmed factor, replacing an unconfirmed one. Raises `MfaAlreadyEnabled`
    when a confirmed factor exists (it is never replaced silently)."""
    if await is_enabled(db, user_id):
        raise MfaAlreadyEnabled()
    await db.execute(
        delete(MfaFactor).where(MfaFactor.user_id == user_id, MfaFactor.confirmed_at.is_(None))
    )
    seed = crypto.new_seed()
    factor = MfaFactor(
        user_id=user_id,
        secret_encrypted=crypto.encrypt_seed(crypto.seed_key(settings), seed, user_id),
    )
    try:
        async with db.begin_nested():
            db.add(factor)
            await db.flush()
    except IntegrityError as exc:
        # A concurrent enrolment or confirmation took the user's one factor row first.
        raise Conflict("Your authenticator changed at the same time. Try again.") from exc
    return Enrolment(seed, crypto.otpauth_uri(seed, email))


async def _claim_step(db: AsyncSession, factor_id: uuid.UUID, step: int, *, confirm: bool) -> bool:
    """Accept `step` for this factor unless it (or a later step) was accepted before: one
    conditional UPDATE, so two concurrent uses of one code give exactly one success.
    `confirm` claims on the unconfirmed factor and confirms it in the same statement."""
    values: dict[str, object] = {"last_used_step": step}
    if confirm:
        state = MfaFactor.confirmed_at.is_(None)
        values["confirmed_at"] = utcnow()
    else:
        state = MfaFactor.confirmed_at.is_not(None)
    claimed = await db.execute(
        update(MfaFactor)
        .where(
            MfaFactor.id == factor_id,
            state,
            or_(MfaFactor.last_used_step.is_(None), MfaFactor.last_used_step < step),
        )
        .values(**values)
        .returning(MfaFactor.id)
    )
    return claimed.first() is not None


async def _use_totp(
    db: AsyncSession, user_id: uuid.UUID, code: str, settings: Settings, *, confirm: bool
) -> bool:
    factor = await _factor(db, user_id, confirmed=not confirm)
    if factor is None or crypto.totp_code(code) is None:
        return False
    seed = crypto.decrypt_seed(crypto.seed_key(settings), factor.secret_encrypted, user_id)
    step = crypto.matching_step(seed, code)
    if step is None:
        return False
    return await _claim_step(db, factor.id, step, confirm=confirm)


async def use_totp(db: AsyncSession, user_id: uuid.UUID, code: str, settings: Settings) -> bool:
    """Accept a code of the user's confirmed factor at most once (now ±1 step)."""
    return await _use_totp(db, user_id, code, settings, confirm=False)


async def confirm_enrolment(
    db: AsyncSession, user_id: uuid.UUID, code: str, settings: Settings
) -> list[str] | None:
    """Confirm the unconfirmed factor with one of its codes and return new recovery codes
    (plaintext, only here), or None when the code is wrong. Raises `MfaNotPending` when there
    is nothing to confirm."""
    if await _factor(db, user_id, confirmed=False) is None:
        raise MfaNotPending()
    if not await _use_totp(db, user_id, code, settings, confirm=True):
        return None
    return await replace_recovery_codes(db, user_id, settings)


async def use_recovery_code(
    db: AsyncSession, user_id: uuid.UUID, code: str, settings: Settings
) -> bool:
    """Spend one of the user's recovery codes: true exactly once per code. A code stored in
    the legacy unkeyed form is accepted (and spent) the same way."""
    normal = crypto.normalize_recovery_code(code)
    if normal is None:
        return False
    digests = (
        crypto.recovery_digest(crypto.recovery_key(settings), user_id, normal),
        crypto.legacy_recovery_digest(user_id, normal),
    )
    claimed = await db.execute(
        update(RecoveryCode)
        .where(
            RecoveryCode.user_id == user_id,
            RecoveryCode.code_hash.in_(digests),
            RecoveryCode.used_at.is_(None),
        )
        .values(used_at=utcnow())
        .returning(RecoveryCode.id)
    )
    return claimed.first() is not None


async def use_code(
    db: AsyncSession, user_id: uuid.UUID, code: str, settings: Settings
) -> Factor | None:
    """Accept a second-factor code: six digits are a TOTP code, anything else is tried as a
    recovery code. Returns which kind was accepted, or None."""
    if crypto.totp_code(code) is not None:
        return "totp" if await use_totp(db, user_id, code, settings) else None
    return "recovery_code" if await use_recovery_code(db, user_id, code, settings) else None


async def replace_recovery_codes(
    db: AsyncSession, user_id: uuid.UUID, settings: Settings
) -> list[str]:
    """Delete the user's recovery codes (legacy ones included) and store 10 new ones, keyed;
    returns them in plaintext."""
    await db.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user_id))
    key = crypto.recovery_key(settings)
    codes = crypto.new_recovery_codes()
    for code in codes:
        digest = crypto.recovery_digest(key, user_id, crypto.normalize_recovery_code(code) or code)
        db.add(RecoveryCode(user_id=user_id, code_hash=digest))
    await db.flush()
    return codes


async def require_enabled(db: AsyncSession, user_id: uuid.UUID) -> None:
    """Raise `MfaNotEnabled` unless the user has a confirmed factor."""
    if not await is_enabled(db, user_id):
        raise MfaNotEnabled()


async def remove(db: AsyncSession, user_id: uuid.UUID) -> None:
    """Turn MFA off: the factor (confirmed or not) and every recovery code are deleted."""
    await db.execute(delete(MfaFactor).where(MfaFactor.user_id == user_id))
    await db.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user_id))


async def live_challenge(db: AsyncSession, token: str, purpose: str) -> OneTimeToken | None:
    """The unused, unexpired sign-in challenge behind `token`, without consuming it: a wrong
    code must not burn the challenge (`users.one_time.consume` does that on success)."""
    if not token or len(token) > 128:
        return None
    return await db.scalar(
        select(OneTimeToken).where(
            OneTimeToken.token_hash == token_digest(token),
            OneTimeToken.purpose == purpose,
            OneTimeToken.used_at.is_(None),
            OneTimeToken.expires_at > utcnow(),
        )
    )
