"""Usage rollups (SPEC §5): one row per key, outcome and time bucket, incremented in place."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, Index, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from authkeep.core.models import Base, UTCDateTime


class UsageRollup(Base):
    """Counts for one key, outcome and bucket. No foreign key: history outlives a deleted key.

    `granularity` is "hour" or "day"; `bucket_start` is the UTC start of that hour or day.
    `units` sums the cost of the counted calls.
    """

    __tablename__ = "usage_rollups"
    __table_args__ = (
        Index("ix_usage_rollups_owner_bucket", "owner", "granularity", "bucket_start"),
        Index("ix_usage_rollups_user_bucket", "user_id", "granularity", "bucket_start"),
    )

    key_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    outcome: Mapped[str] = mapped_column(String(32), primary_key=True)
    granularity: Mapped[str] = mapped_column(String(4), primary_key=True)
    bucket_start: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    owner: Mapped[str] = mapped_column(String(200))
    count: Mapped[int] = mapped_column(BigInteger, default=0)
    units: Mapped[int] = mapped_column(BigInteger, default=0)
