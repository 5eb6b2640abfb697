"""Plans, subscriptions, plan quota counters and threshold events (SPEC §5, §7)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Integer, String, UniqueConstraint, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from authkeep.core.models import Base, Timestamps, UTCDateTime, UUIDPrimaryKey, utcnow


class Plan(UUIDPrimaryKey, Timestamps, Base):
    __tablename__ = "plans"

    slug: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    # Feature names the plan grants, e.g. ["api", "exports"].
    features: Mapped[list[str]] = mapped_column(JSON, default=list)
    # Monthly quotas per feature, e.g. {"api": 10000}. A feature without a limit is unmetered.
    limits: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)


class Subscription(UUIDPrimaryKey, Timestamps, Base):
    """A user's plan. Only status "active" grants the plan's features (seed 004, fixed)."""

    __tablename__ = "subscriptions"

    user_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    plan_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("plans.id", ondelete="RESTRICT"), index=True
    )
    # active | trialing | past_due | canceled
    status: Mapped[str] = mapped_column(String(16))
    seats: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    current_period_end: Mapped[datetime | None] = mapped_column(UTCDateTime)


class QuotaCounter(Base):
    """Units used of one feature by one user in one period (a UTC calendar month).

    Checked and incremented in one statement: `used + cost <= limit` (CHK-AC-08).
    """

    __tablename__ = "quota_counters"

    user_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    feature: Mapped[str] = mapped_column(String(64), primary_key=True)
    period_start: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    used: Mapped[int] = mapped_column(BigInteger, default=0)


class ThresholdEvent(UUIDPrimaryKey, Base):
    """An outbox row per threshold crossing, delivered as a signed webhook with retries.

    The unique (subject, kind, period) makes each threshold fire at most once per period.
    kinds: quota.80, quota.90, quota.100, credits.exhausted, key.expiring.
    """

    __tablename__ = "threshold_events"
    __table_args__ = (UniqueConstraint("subject", "kind", "period", name="uq_threshold_events"),)

    subject: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(32))
    period: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(String(200))
