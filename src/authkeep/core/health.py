"""Health checks (SPEC §6): `/health` has no dependencies; `/health/db` runs a real query."""

from __future__ import annotations

from fastapi import APIRouter, Response

from authkeep.core.deps import AppDatabase, AppSettings

router = APIRouter(tags=["health"])


@router.get("/health", summary="Liveness: the process answers")
async def health(response: Response) -> dict[str, str]:
    response.headers["Cache-Control"] = "no-store"
    return {"status": "ok"}


@router.get(
    "/health/db",
    summary="Readiness: the database answers a real query in time",
    responses={503: {"description": "Database unreachable; retry after `Retry-After` seconds"}},
)
async def health_db(
    response: Response, database: AppDatabase, settings: AppSettings
) -> dict[str, str | int | None]:
    from authkeep.ops.backups import verified_backup_age_seconds

    await database.ping(settings.health_db_timeout)
    response.headers["Cache-Control"] = "no-store"
    # Read from the backup manifest (no database access): null when nothing verified yet.
    age = verified_backup_age_seconds(settings)
    return {"status": "ok", "database": "reachable", "last_verified_backup_age_seconds": age}
