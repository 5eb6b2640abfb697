"""The answer of `AuthkeepClient.session`: who is signed in.

These mirror `authkeep.users.schemas.CurrentSessionRead` (the body of `GET /api/auth/session`)
field for field; they are declared here because the server's module loads the ORM, which a
client must not. `tests/client/test_schemas.py` keeps the two in step.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel


class SessionUser(BaseModel):
    id: uuid.UUID
    email: str
    name: str | None
    role: str
    email_verified: bool
    created_at: datetime


class SessionDetails(BaseModel):
    id: uuid.UUID
    created_at: datetime
    authenticated_at: datetime
    last_seen_at: datetime
    expires_at: datetime
    ip: str | None
    user_agent: str | None
    current: bool


class SessionInfo(BaseModel):
    user: SessionUser
    session: SessionDetails
    # What a cookie request that changes state must send in `X-CSRF-Token`.
    csrf_token: str
