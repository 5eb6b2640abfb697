"""`/api/keys`: a signed-in user creates, lists, reads, updates, revokes, rerolls and deletes
their own API keys (SPEC §6-7). Admins manage any user's keys under
`/api/admin/users/{user_id}/keys` (`keys.admin_routes`, included here).

Who may call: a session (bearer token, or the cookie with the CSRF rule); no session → 401.
The owner is always the caller: the bodies refuse unknown fields such as `user_id` (422,
CHK-AC-03, CVE-2025-61928), and another user's key id is the same 404 as a missing one
(CHK-AC-02). Keys travel in headers only: no route takes a key in its path or query, and only
create and reroll answer with one (`KeyCreated`). Every answer is `no-store`; every change
writes one audit row (`key.*`) and, once committed, drops the key from every verify cache.
"""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request, Response
from sqlalchemy.ext.asyncio import AsyncSession

from authkeep.audit import service as audit
from authkeep.core.deps import DB, AppSettings
from authkeep.keys import admin_routes
from authkeep.keys import service as keys
from authkeep.keys.models import ApiKey
from authkeep.keys.routing import KeyId, KeyRoute, PageSize, committed_change
from authkeep.keys.schemas import KeyCreate, KeyCreated, KeyList, KeyRead, KeyReroll, KeyUpdate
from authkeep.sessions.deps import CurrentSession
from authkeep.sessions.service import ActiveSession

router = APIRouter()
own = APIRouter(prefix="/api/keys", tags=["api keys"], route_class=KeyRoute)


async def _audit(
    db: AsyncSession,
    request: Request,
    principal: ActiveSession,
    action: str,
    key: ApiKey,
    **detail: object,
) -> None:
    await audit.record(
        db,
        action,
        "success",
        request=request,
        actor_id=principal.user.id,
        actor=principal.user.email,
        target=str(key.id),
        detail={"name": key.name, "start": key.start, **detail},
    )


@own.post("", status_code=201, response_model=KeyCreated)
async def create_api_key(
    body: KeyCreate,
    principal: CurrentSession,
    db: DB,
    request: Request,
    settings: AppSettings,
) -> KeyCreated:
    """Create a key for yourself. The answer is the only time the key is shown: store it."""
    key, plaintext = await keys.create_key(db, settings, principal.user.id, body)
    await _audit(db, request, principal, "key.create", key)
    return keys.key_created(key, plaintext)


@own.get("", response_model=KeyList)
async def list_api_keys(
    principal: CurrentSession,
    db: DB,
    limit: PageSize = 100,
    after: uuid.UUID | None = None,
) -> KeyList:
    """Your keys, newest first; `after` = the last id of the previous page."""
    found = await keys.list_keys(db, principal.user.id, limit=limit, after=after)
    return keys.key_list(found, limit)


@own.get("/{key_id}", response_model=KeyRead)
async def read_api_key(key_id: KeyId, principal: CurrentSession, db: DB) -> KeyRead:
    """One of your keys (never the key itself)."""
    return keys.key_read(await keys.get_key(db, principal.user.id, key_id))


@own.patch("/{key_id}", response_model=KeyRead)
async def update_api_key(
    key_id: KeyId,
    body: KeyUpdate,
    principal: CurrentSession,
    db: DB,
    request: Request,
    settings: AppSettings,
) -> KeyRead:
    """Change the fields you send; the others stay as they are."""
    key = await keys.get_key(db, principal.user.id, key_id, for_update=True)
    fields = await keys.update_key(db, settings, key, body)
    await _audit(db, request, principal, "key.update", key, fields=fields)
    await committed_change(db, request, key.id)
    return keys.key_read(key)


@own.post("/{key_id}/revoke", response_model=KeyRead)
async def revoke_api_key(
    key_id: KeyId, principal: CurrentSession, db: DB, request: Request
) -> KeyRead:
    """Revoke the key for good (again: no change)."""
    key = await keys.get_key(db, principal.user.id, key_id, for_update=True)
    changed = await keys.revoke_key(db, key)
    await _audit(db, request, principal, "key.revoke", key, changed=changed)
    await committed_change(db, request, key.id)
    return keys.key_read(key)


@own.post("/{key_id}/reroll", status_code=201, response_model=KeyCreated)
async def reroll_api_key(
    key_id: KeyId,
    body: KeyReroll,
    principal: CurrentSession,
    db: DB,
    request: Request,
    settings: AppSettings,
) -> KeyCreated:
    """A new key with the same settings; the old one keeps working for `grace_seconds`."""
    old = await keys.get_key(db, principal.user.id, key_id, for_update=True)
    new, plaintext = await keys.reroll_key(db, settings, old, body.grace_seconds)
    await _audit(
        db, request, principal, "key.reroll", old, new_key_id=str(new.id), grace=body.grace_seconds
    )
    await committed_change(db, request, old.id)
    return keys.key_created(new, plaintext)


@own.delete("/{key_id}", status_code=204)
async def delete_api_key(
    key_id: KeyId, principal: CurrentSession, db: DB, request: Request
) -> Response:
    """Delete the key (it stops working at once; its usage history stays)."""
    key = await keys.get_key(db, principal.user.id, key_id, for_update=True)
    await keys.delete_key(db, key)
    await _audit(db, request, principal, "key.delete", key)
    await committed_change(db, request, key.id)
    return Response(status_code=204)


router.include_router(own)
router.include_router(admin_routes.router)
