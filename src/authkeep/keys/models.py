"""The api_keys table (SPEC §5): only a keyed hash of the key is stored (CHK-AK-01)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, ForeignKey, Integer, String, Uuid, true
from sqlalchemy.orm import Mapped, mapped_column

from authkeep.core.models import Base, Timestamps, UTCDateTime, UUIDPrimaryKey


class ApiKey(UUIDPrimaryKey, Timestamps, Base):
    __tablename__ = "api_keys"

    # The user who owns the key: only they (or an admin) can see or change it (CHK-AK-03).
    user_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    # Optional external id (a customer, a team): keys sharing it pool their rate limits and
    # usage. When unset the owner is the user id.
    external_id: Mapped[str | None] = mapped_column(String(200), index=True)
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(16))
    # The first characters of the key, kept for display ("ak_3xK9…").
    start: Mapped[str] = mapped_column(String(32))
    # HMAC-SHA-256 hex of the whole key under a server secret (keys.format.key_digest).
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    permissions: Mapped[list[str]] = mapped_column(JSON, default=list)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Credits: None means unlimited. Decremented atomically with the check (CHK-AC-08).
    credits_remaining: Mapped[int | None] = mapped_column(BigInteger)
    refill_amount: Mapped[int | None] = mapped_column(BigInteger)
    # "day" or "month"; None means no refill.
    refill_interval: Mapped[str | None] = mapped_column(String(8))
    refilled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # [{"name": "requests", "limit": 100, "window_seconds": 60}, ...]
    rate_limits: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    # Set on the old key by a reroll: the key that replaced it.
    replaced_by: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    # Bumped by every change; caches compare it.
    version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
