"""Writing and reading the audit log. Every security event is one row (CHK-LG-01)."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request

from authkeep.audit.models import AuditEvent
from authkeep.core.request_context import request_id, request_ip, user_agent

logger = logging.getLogger("authkeep.audit")


async def record(
    db: AsyncSession,
    action: str,
    outcome: str,
    *,
    request: Request | None = None,
    actor_id: uuid.UUID | None = None,
    actor: str | None = None,
    target: str | None = None,
    detail: dict[str, Any] | None = None,
) -> AuditEvent:
    """Add one audit row to the unit of work and log one line (escaped by the formatter)."""
    event = AuditEvent(
        action=action,
        outcome=outcome,
        actor_id=actor_id,
        actor=actor,
        target=target,
        ip=request_ip(request) if request else None,
        user_agent=user_agent(request) if request else None,
        request_id=request_id(request) if request else None,
        detail=detail,
    )
    db.add(event)
    logger.info(
        "audit action=%s outcome=%s actor=%s target=%s ip=%s request_id=%s",
        action,
        outcome,
        actor,
        target,
        event.ip,
        event.request_id,
    )
    return event


async def recent(
    db: AsyncSession,
    *,
    limit: int = 100,
    action: str | None = None,
    actor_id: uuid.UUID | None = None,
    before: datetime | None = None,
) -> list[AuditEvent]:
    """Newest first, optionally filtered by action, actor, or time."""
    query = select(AuditEvent).order_by(AuditEvent.at.desc()).limit(limit)
    if action:
        query = query.where(AuditEvent.action == action)
    if actor_id:
        query = query.where(AuditEvent.actor_id == actor_id)
    if before:
        query = query.where(AuditEvent.at < before)
    return list((await db.scalars(query)).all())
