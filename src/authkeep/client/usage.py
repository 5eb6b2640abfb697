"""Counting cache hits at the server: every verification the client answers from its cache is
still counted once by authkeep, through `POST /api/usage/report`.

Hits are added up per key in memory and sent in the background every `interval` seconds (one
request per key: `{"count": n, "units": m}`), and once more on close. A report is sent again
only when it certainly was not counted: the connection failed before the request went out, or
authkeep answered 429 or 5xx. A report whose fate is unknown (the connection broke after it was
sent) or that authkeep refused (4xx: the key was revoked meanwhile) is dropped with a warning
naming the number of uses, never the key — counting twice would bill twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx

from authkeep.client.cache import secret_digest

logger = logging.getLogger("authkeep.client")

# The request never reached authkeep: sending it again cannot count it twice.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)

# authkeep.usage.schemas.MAX_REPORTED_COUNT: the most uses one report may carry.
MAX_REPORT_COUNT = 100_000

Post = Callable[[str, int, int], Awaitable[httpx.Response]]


@dataclass
class _Pending:
    key: str
    count: int = 0
    units: int = 0


class UsageReporter:
    """Buffers cache hits per key and reports them; `post(key, count, units)` sends one report."""

    def __init__(self, post: Post, interval: float) -> None:
        self.post = post
        self.interval = interval
        self.reported = 0
        self.dropped = 0
        self._pending: dict[str, _Pending] = {}
        self._lock = asyncio.Lock()
        self._closing = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        """Uses counted here and not yet reported."""
        return sum(item.count for item in self._pending.values())

    def add(self, key: str, units: int, digest: str | None = None) -> None:
        """Count one use of `key` answered from the cache (`digest`: its `secret_digest`, when
        the caller has it already). Never blocks."""
        digest = digest or secret_digest(key)
        item = self._pending.get(digest)
        if item is None:
            item = self._pending[digest] = _Pending(key)
        item.count += 1
        item.units += units
        if not self._closing.is_set() and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def flush(self) -> None:
        """Report everything buffered now; keep what must be retried."""
        async with self._lock:
            batch, self._pending = self._pending, {}
            for digest, item in batch.items():
                if not await self._deliver(item):
                    self._merge_back(digest, item)

    async def aclose(self) -> None:
        """Stop the background loop and make a last report."""
        self._closing.set()
        if self._task is not None:
            await self._task
        await self.flush()
        if self._pending:
            lost = self.pending
            self.dropped += lost
            self._pending.clear()
            logger.warning("authkeep unreachable on close: %d cached uses were not reported", lost)

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self.interval)
            await self.flush()
            if self._closing.is_set() or not self._pending:
                return

    async def _deliver(self, item: _Pending) -> bool:
        """Send `item` in reports of at most MAX_REPORT_COUNT uses. True when it is settled
        (counted or dropped); False when what is left in `item` must be retried later."""
        while item.count > 0:
            count = min(item.count, MAX_REPORT_COUNT)
            units = item.units if count == item.count else item.units * count // item.count
            try:
                response = await self.post(item.key, count, units)
            except NOT_SENT:
                return False
            except Exception as exc:  # whatever broke, the report may have been sent
                self._drop(item, "may not have arrived (%s); not resent", type(exc).__name__)
                return True
            if response.status_code == 429 or response.status_code >= 500:
                return False
            if not response.is_success:
                self._drop(item, "was refused (HTTP %d)", response.status_code)
                return True
            self.reported += count
            item.count -= count
            item.units -= units
        return True

    def _drop(self, item: _Pending, why: str, *args: object) -> None:
        self.dropped += item.count
        logger.warning("usage report of %d cached uses " + why, item.count, *args)
        item.count = item.units = 0

    def _merge_back(self, digest: str, item: _Pending) -> None:
        newer = self._pending.get(digest)
        if newer is not None:
            item.count += newer.count
            item.units += newer.units
        self._pending[digest] = item
