"""`/api/usage`: a user's verification counts per key, outcome and hour or day, as JSON or CSV;
and the report a client sends for the calls it answered from its local cache (docs/usage.md).
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.responses import JSONResponse

from authkeep.core.deps import DB
from authkeep.core.models import utcnow
from authkeep.errors import Forbidden, ValidationFailed
from authkeep.keys.deps import CurrentKey
from authkeep.keys.schemas import Outcome
from authkeep.keys.service import KeyNotFound
from authkeep.sessions.deps import ADMIN_ROLE, CurrentSession
from authkeep.usage import service as usage
from authkeep.usage.meter import UsageMeter
from authkeep.usage.models import UsageRollup
from authkeep.usage.schemas import (
    CachedUsage,
    CachedUsageAccepted,
    UsageQuery,
    UsageReport,
    UsageRow,
    UsageTotals,
)
from authkeep.usage.service import Granularity, UsageFilter
from authkeep.users.admin_routes import require_admin_mfa
from authkeep.users.routes import AuthRoute

# AuthRoute: request bodies capped, every answer `no-store` (usage is private).
router = APIRouter(prefix="/api/usage", tags=["usage"], route_class=AuthRoute)

DEFAULT_WINDOW = {"hour": timedelta(hours=24), "day": timedelta(days=30)}
MAX_WINDOW = {"hour": timedelta(days=31), "day": timedelta(days=366)}
MAX_ROWS = 20_000
CSV_COLUMNS = ("bucket_start", "key_id", "owner", "outcome", "count", "units")
# A spreadsheet runs a cell starting with one of these as a formula (CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def bucket_floor(moment: datetime, granularity: Granularity) -> datetime:
    """The start of the UTC hour or day containing `moment`."""
    floored = moment.replace(minute=0, second=0, microsecond=0)
    return floored.replace(hour=0) if granularity == "day" else floored


def usage_filter(principal: CurrentSession, query: UsageQuery) -> UsageFilter:
    """Whose usage and which window; refuses another user's usage to non-admins."""
    user_id = principal.user.id
    if query.user_id is not None and query.user_id != user_id:
        if principal.user.role != ADMIN_ROLE:
            raise Forbidden("Only admins may read another user's usage.")
        user_id = query.user_id
    end = _utc(query.end) if query.end else utcnow()
    start = _utc(query.start) if query.start else end - DEFAULT_WINDOW[query.granularity]
    start = bucket_floor(start, query.granularity)
    if start >= end:
        raise ValidationFailed("start must be before end.")
    if end - start > MAX_WINDOW[query.granularity]:
        days = MAX_WINDOW[query.granularity].days
        raise ValidationFailed(
            f"The window is too large: at most {days} days at {query.granularity} granularity."
        )
    return UsageFilter(
        user_id=user_id,
        granularity=query.granularity,
        start=start,
        end=end,
        key_id=query.key_id,
        owner=query.owner,
        outcome=query.outcome.value if query.outcome else None,
    )


def report_of(where: UsageFilter, rollups: list[UsageRollup]) -> UsageReport:
    rows = [
        UsageRow(
            bucket_start=r.bucket_start,
            key_id=r.key_id,
            owner=r.owner,
            outcome=r.outcome,
            count=r.count,
            units=r.units,
        )
        for r in rollups
    ]
    by_outcome: dict[str, int] = {}
    for row in rows:
        by_outcome[row.outcome] = by_outcome.get(row.outcome, 0) + row.count
    totals = UsageTotals(
        count=sum(r.count for r in rows), units=sum(r.units for r in rows), by_outcome=by_outcome
    )
    return UsageReport(
        granularity=where.granularity, start=where.start, end=where.end, rows=rows, totals=totals
    )


def csv_safe(value: str) -> str:
    """Text a spreadsheet shows as text: a leading formula character gets a `'` before it."""
    return f"'{value}" if value.startswith(FORMULA_STARTS) else value


def as_csv(report: UsageReport) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for row in report.rows:
        writer.writerow(
            [
                row.bucket_start.isoformat().replace("+00:00", "Z"),
                str(row.key_id),
                csv_safe(row.owner),
                csv_safe(row.outcome),
                row.count,
                row.units,
            ]
        )
    return out.getvalue()


def wants_csv(request: Request, query: UsageQuery) -> bool:
    if query.format is not None:
        return query.format == "csv"
    return "text/csv" in request.headers.get("accept", "").lower()


@router.get(
    "",
    response_model=UsageReport,
    responses={200: {"content": {"text/csv": {}}, "description": "JSON, or CSV on request."}},
)
async def read_usage(
    request: Request,
    principal: CurrentSession,
    db: DB,
    query: Annotated[UsageQuery, Query()],
) -> Response:
    """Counts per bucket, key and outcome for the signed-in user (admins: any `user_id`)."""
    where = usage_filter(principal, query)
    if where.user_id != principal.user.id:  # an admin reading another user's usage
        await require_admin_mfa(db, request, principal.user)
    if where.key_id is not None and not await usage.key_is_users(db, where.key_id, where.user_id):
        raise KeyNotFound()
    rollups = await usage.usage_rows(db, where, limit=MAX_ROWS + 1)
    if len(rollups) > MAX_ROWS:
        raise ValidationFailed(
            f"More than {MAX_ROWS} rows: use a shorter window, day granularity, or filter by "
            "key_id, owner or outcome."
        )
    report = report_of(where, rollups)
    if wants_csv(request, query):
        return Response(
            as_csv(report),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="usage.csv"'},
        )
    return JSONResponse(report.model_dump(mode="json"))


@router.post("/report", status_code=status.HTTP_202_ACCEPTED, response_model=CachedUsageAccepted)
async def report_cached_usage(
    request: Request, key: CurrentKey, body: CachedUsage
) -> CachedUsageAccepted:
    """Count `count` VALID verifications of the calling key that a client answered from its
    local cache. Written with the next flush of the usage meter."""
    units = body.count if body.units is None else body.units
    meter: UsageMeter = request.app.state.meter
    meter.record_many(key.key_id, key.user_id, key.owner, Outcome.VALID.value, body.count, units)
    return CachedUsageAccepted(count=body.count, units=units)
