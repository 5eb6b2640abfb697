"""Request and response bodies of `/api/keys` and `/api/keys/verify`.

Requests refuse unknown fields, so a client cannot set an owner, a role or anything else the
server decides (CHK-AC-03). The plaintext key appears in exactly two responses: `KeyCreated`
from create and reroll.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    """Refuses unknown fields. Defined here, not imported from users.schemas, so the Python
    client (`authkeep.client`) can use these models without loading the ORM."""

    model_config = ConfigDict(extra="forbid")


Permission = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:*-]+$")]
LimitName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
ExternalId = Annotated[str, Field(min_length=1, max_length=200)]
KeyName = Annotated[str, Field(min_length=1, max_length=200)]


class RateLimitRule(Strict):
    """A named sliding-window limit on a key: at most `limit` units per `window_seconds`."""

    name: LimitName
    limit: int = Field(ge=1, le=1_000_000_000)
    window_seconds: float = Field(ge=1, le=86_400 * 31)


class Refill(Strict):
    """Credits are set back to `amount` at the start of each UTC day or month."""

    amount: int = Field(ge=1, le=10**15)
    interval: Literal["day", "month"]


class KeyCreate(Strict):
    name: KeyName
    # None = the server default (AUTHKEEP_KEY_PREFIX).
    prefix: str | None = Field(default=None, pattern=r"^[a-z][a-z0-9]{0,15}$")
    permissions: list[Permission] = Field(default_factory=list, max_length=100)
    metadata: dict[str, Any] = Field(default_factory=dict)
    expires_at: datetime | None = None
    rate_limits: list[RateLimitRule] = Field(default_factory=list, max_length=10)
    # None = unlimited credits.
    credits: int | None = Field(default=None, ge=0, le=10**15)
    refill: Refill | None = None
    external_id: ExternalId | None = None


class KeyUpdate(Strict):
    """Every field optional; only the ones sent change."""

    name: KeyName | None = None
    permissions: list[Permission] | None = Field(default=None, max_length=100)
    metadata: dict[str, Any] | None = None
    expires_at: datetime | None = None
    enabled: bool | None = None
    rate_limits: list[RateLimitRule] | None = Field(default=None, max_length=10)
    credits: int | None = Field(default=None, ge=0, le=10**15)
    refill: Refill | None = None
    external_id: ExternalId | None = None


class KeyReroll(Strict):
    """Issue a new key with the same settings; the old one stays valid this long (0 = ends now)."""

    grace_seconds: int = Field(default=0, ge=0)


class KeyRead(BaseModel):
    id: uuid.UUID
    name: str
    prefix: str
    start: str
    user_id: uuid.UUID
    owner: str
    external_id: str | None
    permissions: list[str]
    metadata: dict[str, Any]
    enabled: bool
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    credits: int | None
    refill: Refill | None
    rate_limits: list[RateLimitRule]
    replaced_by: uuid.UUID | None
    created_at: datetime
    updated_at: datetime


class KeyCreated(KeyRead):
    """The only response that carries the key itself. Store it now: it is never shown again."""

    key: str


class KeyList(BaseModel):
    """Newest first. `next_after` is the value for `after` to get the next page (null on the
    last page)."""

    keys: list[KeyRead]
    next_after: uuid.UUID | None = None


# ---- verify ---------------------------------------------------------------------------------


class Outcome(enum.StrEnum):
    """One answer per verification, checked in this order (docs/api-keys.md)."""

    VALID = "VALID"
    NOT_FOUND = "NOT_FOUND"
    DISABLED = "DISABLED"
    EXPIRED = "EXPIRED"
    FORBIDDEN = "FORBIDDEN"
    INSUFFICIENT_PERMISSIONS = "INSUFFICIENT_PERMISSIONS"
    RATE_LIMITED = "RATE_LIMITED"
    USAGE_EXCEEDED = "USAGE_EXCEEDED"


class RateLimitRequest(Strict):
    """Apply the key's limit `name` at this cost."""

    name: LimitName
    cost: int = Field(default=1, ge=0, le=1_000_000)


class VerifyRequest(Strict):
    """The key itself travels in `Authorization: Bearer` or `X-API-Key`, never in the body or URL.

    `permissions` is a small expression: names joined by `and` / `or`, with parentheses
    (e.g. `"documents.read and (documents.write or admin)"`). `ratelimits` None applies every
    limit of the key at cost 1. `feature`, when given, must be granted by the owner's active
    plan and its monthly quota is charged `cost` units.
    """

    cost: int = Field(default=1, ge=0, le=1_000_000)
    permissions: str | None = Field(default=None, max_length=1000)
    ratelimits: list[RateLimitRequest] | None = Field(default=None, max_length=10)
    feature: str | None = Field(default=None, max_length=64)


class RateLimitState(BaseModel):
    name: str
    limit: int
    remaining: int
    # Seconds until a unit frees up (0 when some are free now).
    reset: float
    exceeded: bool


class Entitlement(BaseModel):
    feature: str
    # None: the plan grants the feature without a quota.
    limit: int | None
    used: int
    balance: int | None


class VerifyResult(BaseModel):
    valid: bool
    code: Outcome
    key_id: uuid.UUID | None = None
    owner: str | None = None
    user_id: uuid.UUID | None = None
    name: str | None = None
    permissions: list[str] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)
    expires_at: datetime | None = None
    # None: unlimited credits.
    credits_remaining: int | None = None
    ratelimits: list[RateLimitState] = Field(default_factory=list)
    entitlements: list[Entitlement] = Field(default_factory=list)
    plan: str | None = None
