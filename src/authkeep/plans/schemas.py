"""Request and response bodies of `/api/admin/plans`, `/api/admin/…/subscriptions` and
`/api/entitlements`. Requests refuse unknown fields (CHK-AC-03)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, Field, field_validator

from authkeep.keys.schemas import Entitlement
from authkeep.users.schemas import Strict

FeatureName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
PlanSlug = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_-]*$")]
PlanName = Annotated[str, Field(min_length=1, max_length=200)]
Limit = Annotated[int, Field(ge=0, le=10**15)]
Seats = Annotated[int, Field(ge=1, le=1_000_000)]
SubscriptionStatus = Literal["active", "trialing", "past_due", "canceled"]
MAX_FEATURES = 100


def _distinct(features: list[str] | None) -> list[str] | None:
    if features is not None and len(set(features)) != len(features):
        raise ValueError("features must not repeat")
    return features


class PlanCreate(Strict):
    """`limits` are monthly quotas; every limited feature must be in `features`."""

    slug: PlanSlug
    name: PlanName
    features: list[FeatureName] = Field(default_factory=list, max_length=MAX_FEATURES)
    limits: dict[FeatureName, Limit] = Field(default_factory=dict, max_length=MAX_FEATURES)

    _distinct_features = field_validator("features")(_distinct)


class PlanUpdate(Strict):
    """Every field optional; only the ones sent change."""

    slug: PlanSlug | None = None
    name: PlanName | None = None
    features: list[FeatureName] | None = Field(default=None, max_length=MAX_FEATURES)
    limits: dict[FeatureName, Limit] | None = Field(default=None, max_length=MAX_FEATURES)

    _distinct_features = field_validator("features")(_distinct)


class PlanRead(BaseModel):
    id: uuid.UUID
    slug: str
    name: str
    features: list[str]
    limits: dict[str, int]
    created_at: datetime
    updated_at: datetime


class PlanList(BaseModel):
    plans: list[PlanRead]


class SubscriptionCreate(Strict):
    """Only an `active` subscription grants the plan's features."""

    plan_id: uuid.UUID
    status: SubscriptionStatus = "active"
    seats: Seats = 1
    current_period_end: AwareDatetime | None = None


class SubscriptionUpdate(Strict):
    """Only the fields sent change; `current_period_end: null` clears it."""

    plan_id: uuid.UUID | None = None
    status: SubscriptionStatus | None = None
    seats: Seats | None = None
    current_period_end: AwareDatetime | None = None


class SubscriptionRead(BaseModel):
    id: uuid.UUID
    user_id: uuid.UUID
    plan_id: uuid.UUID
    plan: str
    status: str
    seats: int
    current_period_end: datetime | None
    created_at: datetime
    updated_at: datetime


class SubscriptionList(BaseModel):
    """Newest first."""

    subscriptions: list[SubscriptionRead]


class EntitlementsRead(BaseModel):
    """The caller's active plan (null without one) and, per feature it grants, this month's
    limit (null: unmetered), units used and balance."""

    plan: str | None
    period_start: datetime
    entitlements: list[Entitlement]


class EntitlementCheck(Strict):
    """`user_id` omitted: the caller (a session's user, or an API key's owner)."""

    feature: FeatureName
    user_id: uuid.UUID | None = None


class EntitlementAnswer(BaseModel):
    """`allowed`: the active plan grants the feature, the account is enabled, its quota has
    units left (or none is set) and, when asked with an API key, the key has credits left.
    `credits` is the key's remaining credits (null: unlimited, or not asked with a key)."""

    allowed: bool
    feature: str
    plan: str | None
    limit: int | None
    used: int
    balance: int | None
    credits: int | None = None
