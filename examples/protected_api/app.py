"""A tiny product API protected by authkeep: machines call it with an API key, people with
their authkeep session. Configured by `AUTHKEEP_URL` (and `AUTHKEEP_CACHE_TTL`, seconds).

    AUTHKEEP_URL=http://127.0.0.1:8080 uvicorn app:app --port 9000   # from this directory
"""

from __future__ import annotations

import os
from typing import Annotated

from fastapi import Depends, FastAPI
from pydantic import BaseModel, Field

from authkeep.client import AuthkeepClient, SessionInfo, VerifyResult
from authkeep.client.fastapi import exception_handlers, require_api_key, require_session

authkeep = AuthkeepClient(
    os.environ.get("AUTHKEEP_URL", "http://127.0.0.1:8080"),
    cache_ttl=float(os.environ.get("AUTHKEEP_CACHE_TTL", "5")),
)
app = FastAPI(
    title="Reports API", lifespan=authkeep.lifespan, exception_handlers=exception_handlers
)

ReportReader = Annotated[VerifyResult, Depends(require_api_key(authkeep, "reports.read"))]
ReportWriter = Annotated[
    VerifyResult, Depends(require_api_key(authkeep, "reports.read and reports.write", cost=5))
]
SignedIn = Annotated[SessionInfo, Depends(require_session(authkeep))]


class ReportCreate(BaseModel):
    title: str = Field(min_length=1, max_length=200)


class Report(BaseModel):
    id: int
    title: str
    owner: str


# One list per owner, in memory: enough for an example.
REPORTS: dict[str, list[Report]] = {}


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/reports")
async def list_reports(key: ReportReader) -> list[Report]:
    """The calling key's owner's reports (permission `reports.read`)."""
    return REPORTS.get(str(key.owner), [])


@app.post("/reports", status_code=201)
async def create_report(body: ReportCreate, key: ReportWriter) -> Report:
    """Add a report (permissions `reports.read and reports.write`; costs 5 units)."""
    reports = REPORTS.setdefault(str(key.owner), [])
    report = Report(id=len(reports) + 1, title=body.title, owner=str(key.owner))
    reports.append(report)
    return report


@app.get("/me")
async def me(signed_in: SignedIn) -> dict[str, str]:
    """Who is signed in to authkeep (bearer token or the authkeep session cookie)."""
    return {"user_id": str(signed_in.user.id), "email": signed_in.user.email}
