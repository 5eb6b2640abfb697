"""What the key management routers share: the route class, the path and paging parameters,
and the commit-then-invalidate step every change ends with."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Path, Query, Request
from sqlalchemy.ext.asyncio import AsyncSession

from authkeep.config import Settings
from authkeep.keys.cache import invalidations_for
from authkeep.keys.service import MAX_PAGE
from authkeep.users.routes import BASE_BODY_LIMIT, AuthRoute

# Worst case a client's JSON escaping of the metadata needs over its compact encoding, with
# room for indentation; the other fields fit in the base.
METADATA_BODY_FACTOR = 6


class KeyRoute(AuthRoute):
    """`AuthRoute` (body cap, `no-store`) with room for the largest allowed metadata."""

    def max_body_bytes(self, settings: Settings) -> int:
        return 2 * BASE_BODY_LIMIT + METADATA_BODY_FACTOR * settings.key_metadata_max_bytes


KeyId = Annotated[uuid.UUID, Path(description="The key's id (never the key itself).")]
PageSize = Annotated[int, Query(ge=1, le=MAX_PAGE)]


async def committed_change(db: AsyncSession, request: Request, key_id: uuid.UUID) -> None:
    """Commit the unit of work, then drop the key from every node's verify cache."""
    await db.commit()
    await invalidations_for(request.app).key_changed(key_id)
