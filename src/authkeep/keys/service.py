"""Managing API keys: create, list, read, update, revoke, reroll and delete the keys of one
user (SPEC §6-7). The routes of `/api/keys` (the user's own keys) and of
`/api/admin/users/{user_id}/keys` (an admin on the user's behalf) are thin wrappers over these
functions.

Rules every function here keeps:
- A key is always looked up together with its owner: another user's key id is the same
  `key_not_found` as a missing one (CHK-AC-02, CHK-AK-03).
- Only `key_digest(secret, key)` and the display start are stored; the plaintext leaves in the
  one `KeyCreated` answer of create or reroll (CHK-AK-01).
- Functions add and flush; the caller commits, then tells the verify cache
  (`keys.cache.invalidations_for(app).key_changed(...)`).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from authkeep.config import Settings
from authkeep.core.models import utcnow
from authkeep.errors import ConfigError, Conflict, NotFound, ValidationFailed
from authkeep.keys.format import display_start, key_digest, new_key
from authkeep.keys.models import ApiKey
from authkeep.keys.schemas import (
    KeyCreate,
    KeyCreated,
    KeyList,
    KeyRead,
    KeyUpdate,
    RateLimitRule,
    Refill,
)
from authkeep.users.models import User

# Live keys (not revoked, not replaced by a reroll) one user may hold. Revoked and rerolled
# keys do not count, so a reroll never hits the ceiling.
MAX_LIVE_KEYS_PER_USER = 1000
MAX_PAGE = 1000
# KeyUpdate fields that cannot be cleared: sending null for them is refused.
NOT_NULLABLE = ("name", "permissions", "metadata", "enabled", "rate_limits")


class KeyNotFound(NotFound):
    code = "key_not_found"
    detail = "No such API key among yours."


class MetadataTooLarge(ValidationFailed):
    code = "metadata_too_large"


class InvalidMetadata(ValidationFailed):
    code = "invalid_metadata"
    detail = "metadata must be plain JSON (no NaN or Infinity)."


class DuplicateRateLimit(ValidationFailed):
    code = "duplicate_rate_limit"
    detail = "Each rate limit of a key needs a different name."


class ExpiryNotInFuture(ValidationFailed):
    code = "expiry_not_in_future"
    detail = "expires_at must be in the future."


class ExpiryWithoutZone(ValidationFailed):
    code = "expiry_without_zone"
    detail = "expires_at needs a time zone (for example 2030-01-01T00:00:00Z)."


class RefillNeedsCredits(ValidationFailed):
    code = "refill_needs_credits"
    detail = "A refill needs a credit balance: set credits too (null credits means unlimited)."


class GraceTooLong(ValidationFailed):
    code = "grace_too_long"


class KeyRevoked(Conflict):
    code = "key_revoked"
    detail = "This key is revoked: create a new key instead."


class KeyReplaced(Conflict):
    code = "key_replaced"
    detail = "This key was already rerolled: reroll the key that replaced it."


class KeyExpired(Conflict):
    code = "key_expired"
    detail = "This key has expired: extend its expiry or create a new key."


class KeyLimitReached(Conflict):
    code = "key_limit_reached"
    detail = "This user holds the most live keys allowed: revoke keys no longer in use."


# ---- conversions shared by every route that shows a key ------------------------------------


def owner_of(key: ApiKey) -> str:
    """The owner reported everywhere: the external id when set, else the user id."""
    return key.external_id if key.external_id is not None else str(key.user_id)


def key_read(key: ApiKey) -> KeyRead:
    """What a key looks like in every answer but create and reroll: never the key or its hash."""
    refill = None
    if key.refill_amount is not None and key.refill_interval in ("day", "month"):
        refill = Refill(amount=key.refill_amount, interval=key.refill_interval)
    return KeyRead(
        id=key.id,
        name=key.name,
        prefix=key.prefix,
        start=key.start,
        user_id=key.user_id,
        owner=owner_of(key),
        external_id=key.external_id,
        permissions=list(key.permissions),
        metadata=dict(key.meta),
        enabled=key.enabled,
        expires_at=key.expires_at,
        revoked_at=key.revoked_at,
        last_used_at=key.last_used_at,
        credits=key.credits_remaining,
        refill=refill,
        rate_limits=[RateLimitRule.model_validate(rule) for rule in key.rate_limits],
        replaced_by=key.replaced_by,
        created_at=key.created_at,
        updated_at=key.updated_at,
    )


def key_list(page: Sequence[ApiKey], limit: int) -> KeyList:
    """A page of keys; `next_after` is set when the page is full."""
    next_after = page[-1].id if page and len(page) >= limit else None
    return KeyList(keys=[key_read(key) for key in page], next_after=next_after)


def key_created(key: ApiKey, plaintext: str) -> KeyCreated:
    """The one answer that carries the key itself (create and reroll)."""
    return KeyCreated(**key_read(key).model_dump(), key=plaintext)


def hash_key(settings: Settings, key: str) -> str:
    """The stored and looked-up form of a key (`ApiKey.key_hash`) under the server secret."""
    if settings.secret_key is None:
        raise ConfigError("AUTHKEEP_SECRET_KEY is not set: API keys cannot be hashed.")
    return key_digest(settings.secret_key.get_secret_value(), key)


# ---- checks --------------------------------------------------------------------------------


def check_metadata(metadata: dict[str, Any], settings: Settings) -> None:
    """The compact JSON encoding (UTF-8) must fit in `AUTHKEEP_KEY_METADATA_MAX_BYTES`."""
    try:
        encoded = json.dumps(metadata, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError as exc:
        raise InvalidMetadata() from exc
    size = len(encoded.encode("utf-8"))
    if size > settings.key_metadata_max_bytes:
        raise MetadataTooLarge(
            f"metadata is {size} bytes as compact JSON; the limit is "
            f"{settings.key_metadata_max_bytes} (AUTHKEEP_KEY_METADATA_MAX_BYTES)."
        )


def check_rate_limits(rules: Sequence[RateLimitRule]) -> None:
    names = [rule.name for rule in rules]
    if len(set(names)) != len(names):
        raise DuplicateRateLimit()


def check_expiry(expires_at: datetime | None, *, future: bool) -> None:
    if expires_at is None:
        return
    if expires_at.tzinfo is None or expires_at.utcoffset() is None:
        raise ExpiryWithoutZone()
    if future and expires_at <= utcnow():
        raise ExpiryNotInFuture()


def _check_credits(key: ApiKey) -> None:
    if key.refill_amount is not None and key.credits_remaining is None:
        raise RefillNeedsCredits()


# ---- queries -------------------------------------------------------------------------------


async def get_key(
    db: AsyncSession, user_id: uuid.UUID, key_id: uuid.UUID, *, for_update: bool = False
) -> ApiKey:
    """The key `key_id` of `user_id`, or `KeyNotFound` (also when another user owns it).

    `for_update` locks the row (PostgreSQL; SQLite units of work are serialised already), so
    concurrent changes of one key apply one after the other."""
    query = select(ApiKey).where(ApiKey.id == key_id, ApiKey.user_id == user_id)
    if for_update:
        query = query.with_for_update().execution_options(populate_existing=True)
    key = await db.scalar(query)
    if key is None:
        raise KeyNotFound()
    return key


async def list_keys(
    db: AsyncSession, user_id: uuid.UUID, *, limit: int = 100, after: uuid.UUID | None = None
) -> list[ApiKey]:
    """The user's keys, newest first, `limit` per page; `after` is the last id of the page
    before (a key id that is not the user's gives an empty page)."""
    query = (
        select(ApiKey)
        .where(ApiKey.user_id == user_id)
        .order_by(ApiKey.created_at.desc(), ApiKey.id.desc())
        .limit(min(limit, MAX_PAGE))
    )
    if after is not None:
        last = await db.scalar(
            select(ApiKey.created_at).where(ApiKey.id == after, ApiKey.user_id == user_id)
        )
        if last is None:
            return []
        query = query.where(
            or_(ApiKey.created_at < last, and_(ApiKey.created_at == last, ApiKey.id < after))
        )
    return list((await db.scalars(query)).all())


async def count_live_keys(db: AsyncSession, user_id: uuid.UUID) -> int:
    found = await db.scalar(
        select(func.count())
        .select_from(ApiKey)
        .where(
            ApiKey.user_id == user_id,
            ApiKey.revoked_at.is_(None),
            ApiKey.replaced_by.is_(None),
        )
    )
    return int(found or 0)


# ---- changes -------------------------------------------------------------------------------


async def create_key(
    db: AsyncSession, settings: Settings, user_id: uuid.UUID, body: KeyCreate
) -> tuple[ApiKey, str]:
    """Issue a key for `user_id`; returns the row and the plaintext (shown once)."""
    check_metadata(body.metadata, settings)
    check_rate_limits(body.rate_limits)
    check_expiry(body.expires_at, future=True)
    # Lock the owner's row so concurrent creates count live keys one after the other.
    await db.scalar(select(User.id).where(User.id == user_id).with_for_update())
    if await count_live_keys(db, user_id) >= MAX_LIVE_KEYS_PER_USER:
        raise KeyLimitReached(
            f"A user can hold at most {MAX_LIVE_KEYS_PER_USER} live keys (not revoked, not "
            "rerolled): revoke keys no longer in use."
        )
    prefix = body.prefix or settings.key_prefix
    plaintext = new_key(prefix)
    now = utcnow()
    key = ApiKey(
        user_id=user_id,
        external_id=body.external_id,
        name=body.name,
        prefix=prefix,
        permissions=list(body.permissions),
        meta=dict(body.metadata),
        expires_at=body.expires_at,
        credits_remaining=body.credits,
        refill_amount=body.refill.amount if body.refill else None,
        refill_interval=body.refill.interval if body.refill else None,
        refilled_at=now if body.refill else None,
        rate_limits=[rule.model_dump() for rule in body.rate_limits],
        created_at=now,
        updated_at=now,
    )
    _check_credits(key)
    _set_secret(key, settings, plaintext)
    db.add(key)
    await db.flush()
    return key, plaintext


def _set_secret(key: ApiKey, settings: Settings, plaintext: str) -> None:
    key.key_hash = hash_key(settings, plaintext)
    key.start = display_start(plaintext)


async def update_key(
    db: AsyncSession, settings: Settings, key: ApiKey, body: KeyUpdate
) -> list[str]:
    """Apply the fields the client sent (and only those); returns their names. Any change
    bumps `version` and `updated_at`. Pass a key read with `for_update=True`."""
    sent = sorted(body.model_fields_set)
    for name in NOT_NULLABLE:
        if name in body.model_fields_set and getattr(body, name) is None:
            raise ValidationFailed(f"{name}: cannot be null; leave it out to keep it.")
    if body.metadata is not None:
        check_metadata(body.metadata, settings)
    if body.rate_limits is not None:
        check_rate_limits(body.rate_limits)
    if "expires_at" in body.model_fields_set:
        # A past time is allowed here: it expires the key at once.
        check_expiry(body.expires_at, future=False)
    for name in sent:
        _apply(key, name, getattr(body, name))
    _check_credits(key)
    if sent:
        _touch(key)
        await db.flush()
    return sent


def _apply(key: ApiKey, name: str, value: Any) -> None:
    if name == "metadata":
        key.meta = dict(value)
    elif name == "permissions":
        key.permissions = list(value)
    elif name == "rate_limits":
        key.rate_limits = [rule.model_dump() for rule in value]
    elif name == "credits":
        key.credits_remaining = value
    elif name == "refill":
        key.refill_amount = value.amount if value else None
        key.refill_interval = value.interval if value else None
        key.refilled_at = utcnow() if value else None
    else:  # name, expires_at, enabled, external_id: same name on the row
        setattr(key, name, value)


def _touch(key: ApiKey) -> None:
    key.version = key.version + 1
    key.updated_at = utcnow()


async def revoke_key(db: AsyncSession, key: ApiKey) -> bool:
    """Revoke the key for good. True when it changes now; revoking again keeps the first time.
    Pass a key read with `for_update=True`."""
    if key.revoked_at is not None:
        return False
    key.revoked_at = utcnow()
    _touch(key)
    await db.flush()
    return True


async def reroll_key(
    db: AsyncSession, settings: Settings, old: ApiKey, grace_seconds: int
) -> tuple[ApiKey, str]:
    """A new key with the old one's settings; the old one ends after the grace period (or at
    its own expiry, if sooner) and points at its successor. Returns the new row and plaintext.
    Pass a key read with `for_update=True`."""
    max_seconds = settings.key_reroll_grace_max_hours * 3600
    if grace_seconds > max_seconds:
        raise GraceTooLong(
            f"grace_seconds can be at most {max_seconds} "
            f"(AUTHKEEP_KEY_REROLL_GRACE_MAX_HOURS={settings.key_reroll_grace_max_hours})."
        )
    now = utcnow()
    if old.revoked_at is not None:
        raise KeyRevoked()
    if old.replaced_by is not None:
        raise KeyReplaced()
    if old.expires_at is not None and old.expires_at <= now:
        raise KeyExpired()
    plaintext = new_key(old.prefix)
    new = ApiKey(
        user_id=old.user_id,
        external_id=old.external_id,
        name=old.name,
        prefix=old.prefix,
        permissions=list(old.permissions),
        meta=dict(old.meta),
        enabled=old.enabled,
        expires_at=old.expires_at,
        credits_remaining=old.credits_remaining,
        refill_amount=old.refill_amount,
        refill_interval=old.refill_interval,
        refilled_at=old.refilled_at,
        rate_limits=[dict(rule) for rule in old.rate_limits],
        created_at=now,
        updated_at=now,
    )
    _set_secret(new, settings, plaintext)
    db.add(new)
    await db.flush()
    grace_end = now + timedelta(seconds=grace_seconds)
    old.expires_at = grace_end if old.expires_at is None else min(old.expires_at, grace_end)
    old.replaced_by = new.id
    _touch(old)
    await db.flush()
    return new, plaintext


async def delete_key(db: AsyncSession, key: ApiKey) -> None:
    """Remove the key's row (usage history keeps its id)."""
    await db.execute(delete(ApiKey).where(ApiKey.id == key.id))


async def revoke_all_for_user(db: AsyncSession, user_id: uuid.UUID) -> int:
    """Revoke every key of the user not revoked yet (account deletion); returns how many. The
    caller tells the verify cache (`user_changed`) after the commit."""
    now = utcnow()
    result = await db.execute(
        update(ApiKey)
        .where(ApiKey.user_id == user_id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=now, updated_at=now, version=ApiKey.version + 1)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
