"""Login sessions: random opaque tokens, only their digest stored, idle and absolute timeouts,
and sliding renewal that writes the row at most once per interval (CHK-SE-01..08, FI-RACE-06).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from authkeep.config import Settings
from authkeep.core.db import SQLITE_READ_ONLY
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


# Sign-in and every authenticated request run these statements: built once, with bound
# parameters, on a connection (bench/README.md, "Identity": building a statement per call and
# the ORM's bookkeeping cost about as much Python as running it).
_INSERT = insert(Session)
_LIVE = (
    Session.user_id == bindparam("uid"),
    Session.revoked_at.is_(None),
    Session.expires_at > bindparam("now"),
)
_NEWEST_LIVE = (
    select(Session.id)
    .where(*_LIVE)
    .order_by(Session.created_at.desc(), Session.id.desc())
    .limit(bindparam("keep"))
)
_EVICT_OLDEST = (
    update(Session)
    .where(*_LIVE, Session.id.not_in(_NEWEST_LIVE))
    .values(revoked_at=bindparam("now"))
)
_SESSION_COLUMNS = tuple(Session.__table__.c)
_USER_COLUMNS = tuple(User.__table__.c)
_BY_DIGEST = (
    select(*_SESSION_COLUMNS, *_USER_COLUMNS)
    .join_from(Session, User, User.id == Session.user_id)
    .where(Session.token_hash == bindparam("digest"))
)


async def create(
    db: AsyncSession, user: User, settings: Settings, *, ip: str | None, user_agent: str | None
) -> tuple[str, Session]:
    """Start a session for a stored user; returns the plaintext token (only here) and the row
    (a snapshot, not attached to `db`).

    When the user already has `max_sessions_per_user` live sessions, the oldest are ended
    (CHK-SE-08: the documented rule is "evict oldest"): one update ends every live session but
    the newest `max_sessions_per_user`, however many there are.
    """
    now = utcnow()
    token = new_token()
    values = {
        "id": uuid.uuid4(),
        "user_id": user.id,
        "token_hash": token_digest(token),
        "created_at": now,
        "authenticated_at": now,
        "last_seen_at": now,
        "expires_at": now + timedelta(hours=settings.session_absolute_hours),
        "revoked_at": None,
        "ip": ip,
        "user_agent": user_agent,
    }
    conn = await db.connection()
    await conn.execute(_INSERT, values)
    await conn.execute(
        _EVICT_OLDEST, {"uid": user.id, "now": now, "keep": settings.max_sessions_per_user}
    )
    return token, Session(**values)


async def authenticate(db: AsyncSession, token: str, settings: Settings) -> ActiveSession | None:
    """The session and user behind a token, or None when unknown, revoked, idle too long,
    past its absolute lifetime, or its user is disabled or deleted.

    Every authenticated request starts here, so the read is one Core SELECT on a connection of
    its own, outside the request's unit of work (`db`): on SQLite a plain read transaction
    that never queues for the write lock, on PostgreSQL a single autocommit statement. `db`
    is used only for the renewal write, at most once per `session_renew_seconds`. The
    returned rows are snapshots, not attached to `db`."""
    if not token or len(token) > 128:
        return None
    row = await _read_session(db, token_digest(token))
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


async def _read_session(db: AsyncSession, digest: str) -> tuple[Session, User] | None:
    """The session with this token digest and its user, as snapshots; None when unknown."""
    engine = db.bind
    if not isinstance(engine, AsyncEngine):  # a session bound to one connection: read there
        row = (await db.execute(_BY_DIGEST, {"digest": digest})).first()
    else:
        async with engine.connect() as conn:
            read_only = (
                {SQLITE_READ_ONLY: True}
                if engine.dialect.name == "sqlite"
                else {"isolation_level": "AUTOCOMMIT"}
            )
            conn = await conn.execution_options(**read_only)
            row = (await conn.execute(_BY_DIGEST, {"digest": digest})).first()
    if row is None:
        return None
    split = len(_SESSION_COLUMNS)
    session = Session(**{c.key: v for c, v in zip(_SESSION_COLUMNS, row[:split], strict=True)})
    user = User(**{c.key: v for c, v in zip(_USER_COLUMNS, row[split:], strict=True)})
    return session, user


# Sessions whose renewal this process is writing right now. Checks read outside any write
# lock, so a burst of requests on one session all see it due; only the first one writes.
_RENEWING: set[uuid.UUID] = set()


async def _touch(db: AsyncSession, session: Session, now: datetime, settings: Settings) -> None:
    """Sliding renewal: one conditional write per interval, whatever the request rate (the
    condition keeps it to one row change across processes and nodes)."""
    threshold = now - timedelta(seconds=settings.session_renew_seconds)
    if session.last_seen_at > threshold or session.id in _RENEWING:
        return
    _RENEWING.add(session.id)
    try:
        await db.execute(
            update(Session)
            .where(Session.id == session.id, Session.last_seen_at <= threshold)
            .values(last_seen_at=now)
        )
    finally:
        _RENEWING.discard(session.id)
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
