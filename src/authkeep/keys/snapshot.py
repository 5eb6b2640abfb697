"""What verification needs to know about one key, read in one unit of work and cached under
the key's digest (keys.cache): the key row, its owner's state and the owner's plan.

A snapshot is immutable and holds plain values only (no ORM objects), prepared for the hot path:
the permission matcher, the rate-limit rules by name, the limiter bucket prefix and the
response fields. What changes on every call — credits and quota counters — is charged in the
database, never trusted from here.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from sqlalchemy import select

from authkeep.core.db import SQLITE_READ_ONLY, Database
from authkeep.keys.models import ApiKey
from authkeep.keys.permissions import Granted
from authkeep.keys.schemas import Entitlement, Outcome, VerifyResult
from authkeep.plans.entitlements import Grant, grant_for, quota_used
from authkeep.users.models import User


@dataclass(frozen=True, slots=True)
class LimitRule:
    name: str
    limit: int
    window_seconds: float


@dataclass(frozen=True, slots=True)
class KeySnapshot:
    key_id: uuid.UUID
    user_id: uuid.UUID
    # external_id if set, else str(user_id).
    owner: str
    # Key disabled or revoked.
    disabled: bool
    # Unix seconds; checked against the clock on every call.
    expires_ts: float | None
    # The owner user is disabled or deleted.
    owner_blocked: bool
    permissions: tuple[str, ...]
    granted: Granted
    rate_limits: tuple[LimitRule, ...]
    limits_by_name: Mapping[str, LimitRule]
    # `owner:<external_id>:` or `key:<key_id>:`, followed by the limit's name.
    bucket_prefix: str
    # None: unlimited credits (no database write needed for them).
    credits: int | None
    plan: str | None
    features: frozenset[str]
    # Monthly quota per granted feature that has one.
    quotas: Mapping[str, int]
    # The response fields of a found key, as of loading, and the whole VALID answer.
    template: VerifyResult
    valid_json: bytes

    @property
    def usable(self) -> bool:
        """Not disabled, not blocked; expiry is checked separately (it needs the clock)."""
        return not self.disabled and not self.owner_blocked

    def expired(self, now: float) -> bool:
        return self.expires_ts is not None and self.expires_ts <= now


_KEY_COLUMNS = (
    ApiKey.id,
    ApiKey.user_id,
    ApiKey.external_id,
    ApiKey.name,
    ApiKey.permissions,
    ApiKey.meta,
    ApiKey.enabled,
    ApiKey.expires_at,
    ApiKey.revoked_at,
    ApiKey.credits_remaining,
    ApiKey.rate_limits,
    User.disabled_at,
    User.deleted_at,
)


async def load_snapshot(database: Database, digest: str) -> KeySnapshot | None:
    """The snapshot of the key with this digest, or None. One read-only unit of work: the key
    with its owner's state, the owner's active plan and this month's quota usage."""
    async with database.session_scope() as db:
        # A plain read: on SQLite no write lock for a cache miss.
        await db.connection(execution_options={SQLITE_READ_ONLY: True})
        row = (
            await db.execute(
                select(*_KEY_COLUMNS)
                .join(User, User.id == ApiKey.user_id)
                .where(ApiKey.key_hash == digest)
            )
        ).first()
        if row is None:
            return None
        grant = await grant_for(db, row.user_id)
        used = await quota_used(db, row.user_id, sorted(metered_features(grant)))
    return build_snapshot(row._mapping, grant, used)


def limit_bucket_prefix(key_id: uuid.UUID, user_id: uuid.UUID, external_id: str | None) -> str:
    """Where a key's named limits are counted. Keys of one user that share an external id
    pool their limits; the user id is part of the bucket, so no other account can reach that
    pool by choosing the same external id, and the external id is hashed to a fixed length,
    so no choice of ids and limit names makes two different buckets collide."""
    if external_id is None:
        return f"key:{key_id}:"
    pooled = hashlib.sha256(external_id.encode()).hexdigest()[:32]
    return f"owner:{user_id}:{pooled}:"


def metered_features(grant: Grant) -> set[str]:
    return {feature for feature in grant.features if feature in grant.limits}


def build_snapshot(row: Mapping[Any, Any], grant: Grant, used: Mapping[str, int]) -> KeySnapshot:
    key_id: uuid.UUID = row["id"]
    external_id: str | None = row["external_id"]
    owner = external_id or str(row["user_id"])
    rules = tuple(
        LimitRule(str(r["name"]), int(r["limit"]), float(r["window_seconds"]))
        for r in row["rate_limits"] or ()
    )
    permissions = tuple(row["permissions"] or ())
    quotas = {f: grant.limits[f] for f in metered_features(grant)}
    template = VerifyResult(
        valid=False,
        code=Outcome.NOT_FOUND,
        key_id=key_id,
        owner=owner,
        user_id=row["user_id"],
        name=row["name"],
        permissions=list(permissions),
        metadata=row["meta"] or {},
        expires_at=row["expires_at"],
        credits_remaining=row["credits_remaining"],
        entitlements=entitlements(grant, used),
        plan=grant.plan,
    )
    return KeySnapshot(
        key_id=key_id,
        user_id=row["user_id"],
        owner=owner,
        disabled=not row["enabled"] or row["revoked_at"] is not None,
        expires_ts=row["expires_at"].timestamp() if row["expires_at"] is not None else None,
        owner_blocked=row["disabled_at"] is not None or row["deleted_at"] is not None,
        permissions=permissions,
        granted=Granted.of(permissions),
        rate_limits=rules,
        limits_by_name=MappingProxyType({rule.name: rule for rule in rules}),
        bucket_prefix=limit_bucket_prefix(key_id, row["user_id"], external_id),
        credits=row["credits_remaining"],
        plan=grant.plan,
        features=grant.features,
        quotas=MappingProxyType(quotas),
        template=template,
        valid_json=template.model_copy(update={"valid": True, "code": Outcome.VALID})
        .model_dump_json()
        .encode(),
    )


def entitlements(grant: Grant, used: Mapping[str, int]) -> list[Entitlement]:
    """The plan's features, sorted, with limit, units used this month and balance."""
    return [entitlement(f, grant.limits.get(f), used.get(f, 0)) for f in sorted(grant.features)]


def entitlement(feature: str, limit: int | None, used: int) -> Entitlement:
    balance = None if limit is None else max(0, limit - used)
    return Entitlement(feature=feature, limit=limit, used=used, balance=balance)


def with_usage(items: Sequence[Entitlement], feature: str, used: int) -> list[Entitlement]:
    """`items` with the fresh usage of one feature (the one this call charged)."""
    return [entitlement(e.feature, e.limit, used) if e.feature == feature else e for e in items]
