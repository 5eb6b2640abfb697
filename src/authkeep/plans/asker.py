"""Who asks `POST /api/entitlements/check`, and about whom they may ask.

A signed-in user asks about themselves, an admin about anyone, an API key about its owner. The
key comes in `X-API-Key`, or as `Authorization: Bearer` when the value has the shape of a key
(prefix, random part, checksum — a session token never does); anything else is a session.
A key never carries its owner's admin role.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from authkeep.core.deps import DB, AppSettings
from authkeep.errors import Forbidden
from authkeep.keys.deps import API_KEY_HEADER, InvalidApiKey, current_key
from authkeep.keys.format import parse_key
from authkeep.keys.models import ApiKey
from authkeep.sessions.deps import ADMIN_ROLE, bearer_token, current_session
from authkeep.users import admin
from authkeep.users import service as users
from authkeep.users.admin_routes import require_admin_mfa
from authkeep.users.models import User


@dataclass(frozen=True)
class Caller:
    user: User
    is_admin: bool
    # The API key the question came with (None: a session).
    key_id: uuid.UUID | None = None
    # A signed-in admin's request: asking about another user is an admin power, which has to
    # meet the admin MFA requirement (CHK-AC-06) and is audited when refused.
    admin_request: Request | None = None

    async def subject(self, db: AsyncSession, user_id: uuid.UUID | None) -> User:
        """The user asked about: the caller by default; another user for admins only."""
        if user_id is None or user_id == self.user.id:
            return self.user
        if not self.is_admin or self.admin_request is None:
            raise Forbidden("You may only check your own entitlements.")
        await require_admin_mfa(db, self.admin_request, self.user)
        return await admin.find(db, user_id)

    async def credits(self, db: AsyncSession) -> int | None:
        """The key's remaining credits, read now (None: unlimited, or no key)."""
        if self.key_id is None:
            return None
        remaining = await db.scalar(
            select(ApiKey.credits_remaining).where(ApiKey.id == self.key_id)
        )
        return None if remaining is None else int(remaining)


def sent_api_key(request: Request) -> bool:
    """True when the request authenticates with an API key rather than a session."""
    if request.headers.get(API_KEY_HEADER, "").strip():
        return True
    token = bearer_token(request)
    return token is not None and parse_key(token) is not None


async def entitlement_caller(request: Request, db: DB, settings: AppSettings) -> Caller:
    if sent_api_key(request):
        key = await current_key(request)
        owner = await users.get(db, key.user_id)
        if owner is None:
            raise InvalidApiKey()
        return Caller(owner, is_admin=False, key_id=key.key_id)
    principal = await current_session(request, db, settings)
    is_admin = principal.user.role == ADMIN_ROLE
    return Caller(principal.user, is_admin, admin_request=request if is_admin else None)


Asker = Annotated[Caller, Depends(entitlement_caller)]
