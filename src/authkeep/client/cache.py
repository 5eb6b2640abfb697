"""The client's short local cache, and the rule for which verify answers it may keep.

A verify answer is kept only when no other call could change it — only a change to the key or
its owner could (revocation, disabling, new permissions, the owner disabled). That holds when
all of these are true:

- the answer is `VALID`;
- the key has no rate limits (`ratelimits == []` in the answer) and unlimited credits
  (`credits_remaining is None`), so no counter moves between calls;
- the request names no `feature` (a feature charges the plan's monthly quota on every call);
- the request leaves `ratelimits` unset (every limit of the key applies): an explicit list could
  skip limits that a later request without one must not skip.

`cost` does not change such an answer; it only sets the units counted. Entries are keyed by
`(sha256(key), permissions, feature)` — never by the key itself — and live `cache_ttl` seconds,
or less when the key expires sooner. A change to the key or its owner is therefore seen at most
`cache_ttl` seconds late; set `cache_ttl=0` to see it at once.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from datetime import UTC, datetime
from typing import Generic, NamedTuple, TypeVar

from authkeep.keys.schemas import Outcome, VerifyRequest, VerifyResult

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")
DEFAULT_MAX_ENTRIES = 10_000


class TtlCache(Generic[K, T]):
    """A bounded LRU whose entries expire. A TTL of 0 (or less) keeps nothing."""

    def __init__(
        self,
        ttl_seconds: float,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl_seconds
        self.max_entries = max_entries
        self.clock = clock
        self._entries: OrderedDict[K, tuple[T, float]] = OrderedDict()

    def get(self, key: K) -> T | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        value, expires_at = entry
        if self.clock() >= expires_at:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    def put(self, key: K, value: T, *, seconds: float | None = None) -> None:
        """Keep `value` for the TTL, or for `seconds` when that is shorter."""
        keep = self.ttl if seconds is None else min(self.ttl, seconds)
        if keep <= 0:
            return
        self._entries[key] = (value, self.clock() + keep)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


def secret_digest(secret: str) -> str:
    """What the cache keeps instead of a key or a session token."""
    return hashlib.sha256(secret.encode()).hexdigest()


class VerifySlot(NamedTuple):
    key_digest: str
    permissions: str | None
    feature: str | None


def verify_slot(key: str, request: VerifyRequest) -> VerifySlot | None:
    """Where this request's answer may be cached, or None when it never may."""
    if request.feature is not None or request.ratelimits is not None:
        return None
    return VerifySlot(secret_digest(key), request.permissions, request.feature)


def cacheable(result: VerifyResult) -> bool:
    """True when no other call can change this answer (see the module docstring)."""
    return (
        result.code is Outcome.VALID
        and result.valid
        and result.ratelimits == []
        and result.credits_remaining is None
    )


def seconds_until(moment: datetime | None) -> float | None:
    """Seconds from now until `moment` (naive means UTC), or None when there is no moment."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - datetime.now(UTC)).total_seconds()
