"""Single-use secrets (email verification, password reset, admin setup): issue and consume.

Only a SHA-256 digest is stored. `consume` is one conditional UPDATE, so under any number of
concurrent attempts exactly one succeeds, on SQLite and PostgreSQL alike (RELIABILITY FI-RACE-01).
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from authkeep.core.models import utcnow
from authkeep.core.security import new_token, token_digest
from authkeep.users.models import OneTimeToken

VERIFY_EMAIL = "verify_email"
RESET_PASSWORD = "reset_password"  # noqa: S105 (a purpose name, not a secret)
ADMIN_SETUP = "admin_setup"


async def issue(
    db: AsyncSession, purpose: str, ttl: timedelta, user_id: uuid.UUID | None = None
) -> str:
    """Create a token and return its plaintext (the only time it exists outside the user)."""
    token = new_token()
    db.add(
        OneTimeToken(
            user_id=user_id,
            purpose=purpose,
            token_hash=token_digest(token),
            expires_at=utcnow() + ttl,
        )
    )
    await db.flush()
    return token


async def consume(db: AsyncSession, token: str, purpose: str) -> OneTimeToken | None:
    """Mark the token used and return it, or None when unknown, expired, used or for another
    purpose. Atomic: the row is claimed by the same statement that checks it."""
    now = utcnow()
    claimed = await db.execute(
        update(OneTimeToken)
        .where(
            OneTimeToken.token_hash == token_digest(token),
            OneTimeToken.purpose == purpose,
            OneTimeToken.used_at.is_(None),
            OneTimeToken.expires_at > now,
        )
        .values(used_at=now)
        .returning(OneTimeToken.id)
    )
    row = claimed.first()
    if row is None:
        return None
    return await db.get(OneTimeToken, row[0])


async def revoke_unused(db: AsyncSession, user_id: uuid.UUID, purpose: str) -> None:
    """Invalidate every outstanding token of this purpose for the user (e.g. after a reset)."""
    await db.execute(
        update(OneTimeToken)
        .where(
            OneTimeToken.user_id == user_id,
            OneTimeToken.purpose == purpose,
            OneTimeToken.used_at.is_(None),
        )
        .values(used_at=utcnow())
    )
