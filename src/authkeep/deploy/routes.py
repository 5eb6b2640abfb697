"""`GET /api/version`: which authkeep a node runs, so a deploy can prove the new code is live."""

from __future__ import annotations

from fastapi import APIRouter, Response
from pydantic import BaseModel

from authkeep import __version__

router = APIRouter(tags=["health"])


class VersionRead(BaseModel):
    version: str


@router.get("/api/version", summary="The authkeep version this node runs")
async def get_version(response: Response) -> VersionRead:
    response.headers["Cache-Control"] = "no-store"
    return VersionRead(version=__version__)
