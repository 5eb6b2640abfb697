"""Request and response bodies of `/api/auth`. Requests refuse unknown fields (CHK-AC-03,
CHK-API-05); emails are canonicalised on the way in (see `users.service.canonical_email`).
Passwords have no schema length limit on purpose: the policy answers with its own reason
code (`password_too_long`), and the route's body cap stops oversize requests before parsing.
"""

from __future__ import annotations

import unicodedata
import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from authkeep.config import Settings
from authkeep.sessions.csrf import csrf_token
from authkeep.sessions.models import Session
from authkeep.users.models import User
from authkeep.users.service import SignInResult, canonical_email


def _printable_name(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if any(unicodedata.category(ch) in {"Cc", "Cf", "Cs", "Zl", "Zp"} for ch in value):
        raise ValueError("names cannot contain control or invisible characters")
    return value or None


Email = Annotated[str, Field(min_length=3, max_length=1024), AfterValidator(canonical_email)]
Password = Annotated[str, Field(description="Any Unicode text; see the password policy.")]
Name = Annotated[str | None, Field(max_length=200), AfterValidator(_printable_name)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AccountCreate(Strict):
    """Sign-up."""

    email: Email
    password: Password
    name: Name = None


class SignUpAccepted(BaseModel):
    """The same answer whether or not the email already had an account."""

    status: Literal["accepted"] = "accepted"
    detail: str = (
        "If this email address was not registered yet, the account now exists: sign in with "
        "it. If it was, nothing changed."
    )


class SessionCreate(Strict):
    """Sign-in credentials."""

    email: Email
    password: Password


class PasswordChange(Strict):
    current_password: Password
    new_password: Password


class AccountDelete(Strict):
    password: Password


class Reauthentication(Strict):
    """Re-authentication: the password, and when the user has MFA on, one of `code` or
    `recovery_code`. The code fields have the limits of the MFA routes' codes (`mfa.schemas`
    imports this module, so they are spelled out here)."""

    password: Password
    code: str | None = Field(
        None,
        min_length=1,
        max_length=32,
        description="A 6-digit TOTP code, or a recovery code (`xxxxx-xxxxx`).",
    )
    recovery_code: str | None = Field(
        None, min_length=1, max_length=32, description="A recovery code (`xxxxx-xxxxx`)."
    )

    @model_validator(mode="after")
    def _at_most_one_code(self) -> Reauthentication:
        if self.code is not None and self.recovery_code is not None:
            raise ValueError("send at most one of code and recovery_code")
        return self


class UserRead(BaseModel):
    id: uuid.UUID
    email: str
    name: str | None
    role: str
    email_verified: bool
    created_at: datetime

    @classmethod
    def of(cls, user: User) -> UserRead:
        return cls(
            id=user.id,
            email=user.email,
            name=user.name,
            role=user.role,
            email_verified=user.email_verified_at is not None,
            created_at=user.created_at,
        )


class SessionRead(BaseModel):
    id: uuid.UUID
    created_at: datetime
    authenticated_at: datetime
    last_seen_at: datetime
    expires_at: datetime
    ip: str | None
    user_agent: str | None
    current: bool

    @classmethod
    def of(cls, session: Session, *, current_id: uuid.UUID | None) -> SessionRead:
        return cls(
            id=session.id,
            created_at=session.created_at,
            authenticated_at=session.authenticated_at,
            last_seen_at=session.last_seen_at,
            expires_at=session.expires_at,
            ip=session.ip,
            user_agent=session.user_agent,
            current=session.id == current_id,
        )


CsrfToken = Annotated[
    str,
    Field(
        description="Send it in the `X-CSRF-Token` header of every request that authenticates "
        "with the session cookie and is not GET, HEAD or OPTIONS. The same for the whole "
        "session."
    ),
]


class SessionCreated(BaseModel):
    """A new session. `token` is the bearer token for non-browser clients; browsers use the
    HttpOnly cookie set by the same response and can ignore it, but keep `csrf_token`."""

    token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 (a scheme name)
    session: SessionRead
    user: UserRead
    csrf_token: CsrfToken

    @classmethod
    def of(cls, result: SignInResult, settings: Settings) -> SessionCreated:
        return cls(
            token=result.token,
            session=SessionRead.of(result.session, current_id=result.session.id),
            user=UserRead.of(result.user),
            csrf_token=csrf_token(settings, result.session.token_hash),
        )


class MfaChallengeRead(BaseModel):
    """The password was right; finish with `POST /api/auth/sign-in/mfa` and this token."""

    mfa_required: Literal[True] = True
    mfa_token: str


class CurrentSessionRead(BaseModel):
    user: UserRead
    session: SessionRead
    csrf_token: CsrfToken


class SessionsRevoked(BaseModel):
    revoked: int


class PasswordChanged(BaseModel):
    status: Literal["changed"] = "changed"
    sessions_revoked: int
