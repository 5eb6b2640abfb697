"""The verify cache: key digest → what verification needs, so a cache hit costs no database
round trip (SPEC §7). Entries expire after `AUTHKEEP_KEY_CACHE_SECONDS` and are dropped at once
when their key or their owner changes (`Invalidations`), on this node directly and on every
other node through Redis when `AUTHKEEP_REDIS_URL` is set (core.redis_bus).
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from starlette.applications import Starlette

T = TypeVar("T")
DEFAULT_MAX_ENTRIES = 100_000


@dataclass
class _Slot(Generic[T]):
    value: T
    key_id: uuid.UUID
    user_id: uuid.UUID
    stored_at: float


class KeyCache(Generic[T]):
    """Bounded LRU with a TTL. A TTL of 0 disables caching (every verify reads the database)."""

    def __init__(
        self,
        ttl_seconds: float,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl_seconds
        self.max_entries = max_entries
        self.clock = clock
        self.hits = 0
        self.misses = 0
        # Bumped by every drop: a loader that read the database before a drop must not store
        # what it read (it may predate the change), so it compares this before `put`.
        self.generation = 0
        self._slots: OrderedDict[str, _Slot[T]] = OrderedDict()

    def get(self, digest: str) -> T | None:
        slot = self._slots.get(digest)
        if slot is None or self.clock() - slot.stored_at >= self.ttl:
            if slot is not None:
                del self._slots[digest]
            self.misses += 1
            return None
        self._slots.move_to_end(digest)
        self.hits += 1
        return slot.value

    def put(self, digest: str, key_id: uuid.UUID, user_id: uuid.UUID, value: T) -> None:
        if self.ttl <= 0:
            return
        self._slots[digest] = _Slot(value, key_id, user_id, self.clock())
        self._slots.move_to_end(digest)
        while len(self._slots) > self.max_entries:
            self._slots.popitem(last=False)

    def drop_key(self, key_id: uuid.UUID) -> None:
        self.generation += 1
        for digest in [d for d, slot in self._slots.items() if slot.key_id == key_id]:
            del self._slots[digest]

    def drop_user(self, user_id: uuid.UUID) -> None:
        self.generation += 1
        for digest in [d for d, slot in self._slots.items() if slot.user_id == user_id]:
            del self._slots[digest]

    def clear(self) -> None:
        self.generation += 1
        self._slots.clear()

    def __len__(self) -> int:
        return len(self._slots)


class Invalidations(Protocol):
    """How a change reaches every node's cache. Call after the change has committed."""

    async def key_changed(self, key_id: uuid.UUID) -> None: ...

    async def user_changed(self, user_id: uuid.UUID) -> None: ...


class LocalInvalidations:
    """One node: drop the entries from this process's cache."""

    def __init__(self, cache: KeyCache[object]) -> None:
        self.cache = cache

    async def key_changed(self, key_id: uuid.UUID) -> None:
        self.cache.drop_key(key_id)

    async def user_changed(self, user_id: uuid.UUID) -> None:
        self.cache.drop_user(user_id)


def key_cache_for(app: Starlette) -> KeyCache[object]:
    cache: KeyCache[object] = app.state.key_cache
    return cache


def invalidations_for(app: Starlette) -> Invalidations:
    invalidations: Invalidations = app.state.invalidations
    return invalidations
