"""`/api/admin/users/{user_id}/keys`: an admin manages any user's API keys on their behalf —
the same operations as `/api/keys`, on the keys of the user named in the path.

Who may call: the rules of the admin API (`users.admin_routes`): no session → 401, a
non-admin → 403 `forbidden` (audited as `admin.access` / `denied`); changes also need a fresh
session (403 `reauth_required`). An unknown or deleted user is 404 `unknown_user`; a key of
another user is 404 `key_not_found`. Every change writes one audit row (`admin.key.*`, target
the user, `detail.key_id` the key); reads are not audited, like the rest of the admin API.
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Request, Response
from sqlalchemy.ext.asyncio import AsyncSession

from authkeep.core.deps import DB, AppSettings
from authkeep.keys import service as keys
from authkeep.keys.models import ApiKey
from authkeep.keys.routing import KeyId, KeyRoute, PageSize, committed_change
from authkeep.keys.schemas import KeyCreate, KeyCreated, KeyList, KeyRead, KeyReroll, KeyUpdate
from authkeep.sessions.service import ActiveSession
from authkeep.users import admin
from authkeep.users.admin_routes import Admin, FreshAdmin
from authkeep.users.models import User

router = APIRouter(
    prefix="/api/admin/users/{user_id}/keys", tags=["admin", "api keys"], route_class=KeyRoute
)


async def _audit(
    db: AsyncSession,
    request: Request,
    principal: ActiveSession,
    action: str,
    user: User,
    key: ApiKey,
    **detail: Any,
) -> None:
    await admin.record(
        db,
        admin.Actor.of(principal, request),
        action,
        user,
        {"key_id": str(key.id), "name": key.name, "start": key.start, **detail},
    )


@router.post("", status_code=201, response_model=KeyCreated)
async def create_user_api_key(
    user_id: uuid.UUID,
    body: KeyCreate,
    principal: FreshAdmin,
    db: DB,
    request: Request,
    settings: AppSettings,
) -> KeyCreated:
    """Create a key owned by the user. The answer is the only time the key is shown."""
    user = await admin.find(db, user_id)
    key, plaintext = await keys.create_key(db, settings, user.id, body)
    await _audit(db, request, principal, "admin.key.create", user, key)
    return keys.key_created(key, plaintext)


@router.get("", response_model=KeyList)
async def list_user_api_keys(
    user_id: uuid.UUID,
    principal: Admin,
    db: DB,
    limit: PageSize = 100,
    after: uuid.UUID | None = None,
) -> KeyList:
    """The user's keys, newest first; `after` = the last id of the previous page."""
    user = await admin.find(db, user_id)
    return keys.key_list(await keys.list_keys(db, user.id, limit=limit, after=after), limit)


@router.get("/{key_id}", response_model=KeyRead)
async def read_user_api_key(user_id: uuid.UUID, key_id: KeyId, principal: Admin, db: DB) -> KeyRead:
    """One of the user's keys (never the key itself)."""
    user = await admin.find(db, user_id)
    return keys.key_read(await keys.get_key(db, user.id, key_id))


@router.patch("/{key_id}", response_model=KeyRead)
async def update_user_api_key(
    user_id: uuid.UUID,
    key_id: KeyId,
    body: KeyUpdate,
    principal: FreshAdmin,
    db: DB,
    request: Request,
    settings: AppSettings,
) -> KeyRead:
    """Change the fields sent; the others stay as they are."""
    user = await admin.find(db, user_id)
    key = await keys.get_key(db, user.id, key_id, for_update=True)
    fields = await keys.update_key(db, settings, key, body)
    await _audit(db, request, principal, "admin.key.update", user, key, fields=fields)
    await committed_change(db, request, key.id)
    return keys.key_read(key)


@router.post("/{key_id}/revoke", response_model=KeyRead)
async def revoke_user_api_key(
    user_id: uuid.UUID, key_id: KeyId, principal: FreshAdmin, db: DB, request: Request
) -> KeyRead:
    """Revoke the user's key for good (again: no change)."""
    user = await admin.find(db, user_id)
    key = await keys.get_key(db, user.id, key_id, for_update=True)
    changed = await keys.revoke_key(db, key)
    await _audit(db, request, principal, "admin.key.revoke", user, key, changed=changed)
    await committed_change(db, request, key.id)
    return keys.key_read(key)


@router.post("/{key_id}/reroll", status_code=201, response_model=KeyCreated)
async def reroll_user_api_key(
    user_id: uuid.UUID,
    key_id: KeyId,
    body: KeyReroll,
    principal: FreshAdmin,
    db: DB,
    request: Request,
    settings: AppSettings,
) -> KeyCreated:
    """A new key with the same settings; the old one keeps working for `grace_seconds`."""
    user = await admin.find(db, user_id)
    old = await keys.get_key(db, user.id, key_id, for_update=True)
    new, plaintext = await keys.reroll_key(db, settings, old, body.grace_seconds)
    detail = {"new_key_id": str(new.id), "grace": body.grace_seconds}
    await _audit(db, request, principal, "admin.key.reroll", user, old, **detail)
    await committed_change(db, request, old.id)
    return keys.key_created(new, plaintext)


@router.delete("/{key_id}", status_code=204)
async def delete_user_api_key(
    user_id: uuid.UUID, key_id: KeyId, principal: FreshAdmin, db: DB, request: Request
) -> Response:
    """Delete the user's key (it stops working at once; its usage history stays)."""
    user = await admin.find(db, user_id)
    key = await keys.get_key(db, user.id, key_id, for_update=True)
    await keys.delete_key(db, key)
    await _audit(db, request, principal, "admin.key.delete", user, key)
    await committed_change(db, request, key.id)
    return Response(status_code=204)
