"""TOTP multi-factor authentication and recovery codes."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from authkeep.mfa.models import MfaFactor


async def is_enabled(db: AsyncSession, user_id: uuid.UUID) -> bool:
    """True when the user has a confirmed TOTP factor: sign-in then needs a second step."""
    found = await db.scalar(
        select(MfaFactor.id).where(
            MfaFactor.user_id == user_id, MfaFactor.confirmed_at.is_not(None)
        )
    )
    return found is not None
