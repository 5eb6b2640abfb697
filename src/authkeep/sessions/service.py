"""Login sessions: random opaque tokens, only their digest stored, idle and absolute timeouts,
and sliding renewal that writes the row at most once per interval (CHK-SE-01..08, FI-RACE-06).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from authkeep.config import Settings
from authkeep.core.models import utcnow
from authkeep.core.security import new_token, token_digest
from authkeep.sessions.models import Session
from authkeep.users.models import User


@dataclass(frozen=True)
class ActiveSession:
    """A session that passed every check, with its user."""

    session: Session
    user: User


def idle_timeout(settings: Settings) -> timedelta:
    return timedelta(minutes=settings.session_idle_minutes)


async def create(
    db: AsyncSession, user: User, settings: Settings, *, ip: str | None, user_agent: str | None
) -> tuple[str, Session]:
    """Start a session; returns the plaintext token (only here) and the row.

    When the user already has `max_sessions_per_user` live sessions, the oldest are ended
    (CHK-SE-08: the documented rule is "evict oldest").
    """
    now = utcnow()
    token = new_token()
    session = Session(
        user_id=user.id,
        token_hash=token_digest(token),
        created_at=now,
        authenticated_at=now,
        last_seen_at=now,
        expires_at=now + timedelta(hours=settings.session_absolute_hours),
        ip=ip,
        user_agent=user_agent,
    )
    db.add(session)
    await db.flush()
    live = await list_for_user(db, user.id)
    for old in live[settings.max_sessions_per_user :]:
        old.revoked_at = now
    return token, session


async def authenticate(db: AsyncSession, token: str, settings: Settings) -> ActiveSession | None:
    """The session and user behind a token, or None when unknown, revoked, idle too long,
    past its absolute lifetime, or its user is disabled or deleted."""
    if not token or len(token) > 128:
        return None
    row = (
        await db.execute(
            select(Session, User)
            .join(User, User.id == Session.user_id)
            .where(Session.token_hash == token_digest(token))
        )
    ).first()
    if row is None:
        return None
    session, user = row
    now = utcnow()
    if (
        session.revoked_at is not None
        or session.expires_at <= now
        or session.last_seen_at + idle_timeout(settings) <= now
        or user.disabled_at is not None
        or user.deleted_at is not None
    ):
        return None
    await _touch(db, session, now, settings)
    return ActiveSession(session, user)


async def _touch(db: AsyncSession, session: Session, now: datetime, settings: Settings) -> None:
    """Sliding renewal: one conditional write per interval, whatever the request rate."""
    threshold = now - timedelta(seconds=settings.session_renew_seconds)
    if session.last_seen_at > threshold:
        return
    await db.execute(
        update(Session)
        .where(Session.id == session.id, Session.last_seen_at <= threshold)
        .values(last_seen_at=now)
    )
    session.last_seen_at = now


def is_fresh(session: Session, settings: Settings) -> bool:
    """Recently authenticated enough for a sensitive action (CHK-SE-06)."""
    return utcnow() - session.authenticated_at <= timedelta(minutes=settings.session_fresh_minutes)


async def list_for_user(db: AsyncSession, user_id: uuid.UUID) -> list[Session]:
    """The user's live sessions, newest first."""
    now = utcnow()
    result = await db.scalars(
        select(Session)
        .where(Session.user_id == user_id, Session.revoked_at.is_(None), Session.expires_at > now)
        .order_by(Session.created_at.desc())
    )
    return list(result.all())


async def revoke(db: AsyncSession, user_id: uuid.UUID, session_id: uuid.UUID) -> bool:
    """End one of this user's sessions. False when it is not theirs or already ended."""
    result = await db.execute(
        update(Session)
        .where(Session.id == session_id, Session.user_id == user_id, Session.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def revoke_all(
    db: AsyncSession, user_id: uuid.UUID, *, except_id: uuid.UUID | None = None
) -> int:
    """End every session of the user (but `except_id`); returns how many ended."""
    query = update(Session).where(Session.user_id == user_id, Session.revoked_at.is_(None))
    if except_id is not None:
        query = query.where(Session.id != except_id)
    result = await db.execute(query.values(revoked_at=utcnow()))
    return int(result.rowcount)  # type: ignore[attr-defined]
