"""Bodies and query parameters of `/api/usage` (docs/usage.md)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from authkeep.keys.schemas import Outcome
from authkeep.usage.service import Granularity

# One report from a client's local cache: bounded so a single call cannot inflate usage much.
MAX_REPORTED_COUNT = 100_000
MAX_COST_PER_CALL = 1_000_000


class UsageQuery(BaseModel):
    """`GET /api/usage` query parameters. Times are ISO 8601; a time without a zone is UTC."""

    model_config = ConfigDict(extra="forbid")

    start: datetime | None = Field(
        default=None,
        description="First bucket: the one containing this time. Default: end minus 24 hours "
        "(hour) or minus 30 days (day).",
    )
    end: datetime | None = Field(
        default=None, description="Buckets starting before this time. Default: now."
    )
    granularity: Granularity = "hour"
    key_id: uuid.UUID | None = None
    owner: str | None = Field(default=None, min_length=1, max_length=200)
    outcome: Outcome | None = None
    user_id: uuid.UUID | None = Field(
        default=None, description="Admins only: another user's usage."
    )
    format: Literal["json", "csv"] | None = Field(
        default=None, description="csv, or send `Accept: text/csv`. Default json."
    )


class UsageRow(BaseModel):
    bucket_start: datetime
    key_id: uuid.UUID
    owner: str
    outcome: str
    count: int
    units: int


class UsageTotals(BaseModel):
    count: int
    units: int
    # outcome → count
    by_outcome: dict[str, int]


class UsageReport(BaseModel):
    granularity: Granularity
    start: datetime
    end: datetime
    rows: list[UsageRow]
    totals: UsageTotals


class CachedUsage(BaseModel):
    """`POST /api/usage/report`: VALID verifications a client answered from its local cache."""

    model_config = ConfigDict(extra="forbid")

    count: int = Field(ge=1, le=MAX_REPORTED_COUNT)
    # Total cost of those calls; default: one unit each.
    units: int | None = Field(default=None, ge=0, le=MAX_REPORTED_COUNT * MAX_COST_PER_CALL)


class CachedUsageAccepted(BaseModel):
    count: int
    units: int
