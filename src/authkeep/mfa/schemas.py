"""Request and response bodies of the MFA routes. Requests refuse unknown fields; codes are
short strings (the service decides whether one is a TOTP or a recovery code)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, Field, model_validator

from authkeep.mfa.service import MfaStatus
from authkeep.users.schemas import Password, Strict

Code = Annotated[str, Field(min_length=1, max_length=32, description="6-digit TOTP code.")]
AnyCode = Annotated[
    str,
    Field(
        min_length=1,
        max_length=32,
        description="A 6-digit TOTP code, or a recovery code (`xxxxx-xxxxx`).",
    ),
]


class TotpEnrolmentCreated(BaseModel):
    """The new seed: shown once. `otpauth_uri` is what a QR code for authenticator apps holds."""

    secret: str
    otpauth_uri: str


class TotpConfirm(Strict):
    code: Code


class RecoveryCodesCreated(BaseModel):
    """Ten single-use recovery codes: shown once, stored only as digests."""

    recovery_codes: list[str]


class RecoveryCodesRegenerate(Strict):
    code: Code


class MfaDisable(Strict):
    """Turning MFA off needs the password and either a TOTP code or a recovery code."""

    password: Password
    code: AnyCode | None = None
    recovery_code: AnyCode | None = None

    @model_validator(mode="after")
    def _one_code(self) -> MfaDisable:
        if (self.code is None) == (self.recovery_code is None):
            raise ValueError("send exactly one of code and recovery_code")
        return self


class MfaStatusRead(BaseModel):
    enabled: bool
    confirmed_at: datetime | None
    recovery_codes_left: int

    @classmethod
    def of(cls, status: MfaStatus) -> MfaStatusRead:
        return cls(
            enabled=status.enabled,
            confirmed_at=status.confirmed_at,
            recovery_codes_left=status.recovery_codes_left,
        )


class MfaSignIn(Strict):
    """The second sign-in step: the challenge token from sign-in and a code."""

    mfa_token: str = Field(min_length=1, max_length=128)
    code: AnyCode
