"""Cache invalidations pushed to every node over Redis pub/sub (SPEC §7 and §9).

`RedisInvalidations` is the `keys.cache.Invalidations` of a multi-node deployment: a change
drops this node's entries at once, then publishes `key:<uuid>` or `user:<uuid>` on one channel;
every node (this one included) listens and drops the same entries from its own cache. It is also
the background service that listens. Messages published while a node's subscription was down
are lost, so after a reconnection the node empties its whole cache rather than trust it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Protocol

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from authkeep.core.db import Database

logger = logging.getLogger("authkeep.redis")

CHANNEL = "authkeep:invalidations"
POLL_SECONDS = 1.0
RETRY_SECONDS = (0.2, 0.5, 1.0, 2.0, 5.0)


class DroppableCache(Protocol):
    """What the bus needs from a cache (`keys.cache.KeyCache` offers it)."""

    def drop_key(self, key_id: uuid.UUID) -> None: ...

    def drop_user(self, user_id: uuid.UUID) -> None: ...

    def clear(self) -> None: ...


class RedisInvalidations:
    """Invalidations through Redis pub/sub, and the listener that applies other nodes' ones."""

    def __init__(self, client: Redis, cache: DroppableCache, channel: str = CHANNEL) -> None:
        self.client = client
        self.cache = cache
        self.channel = channel
        self.received = 0
        self.subscribed = asyncio.Event()
        self._pubsub: PubSub | None = None
        self._task: asyncio.Task[None] | None = None

    async def key_changed(self, key_id: uuid.UUID) -> None:
        self.cache.drop_key(key_id)
        await self._publish(f"key:{key_id}")

    async def user_changed(self, user_id: uuid.UUID) -> None:
        self.cache.drop_user(user_id)
        await self._publish(f"user:{user_id}")

    async def _publish(self, message: str) -> None:
        # The change has committed and this node's cache is clean; another node that misses
        # the message keeps its entry at most AUTHKEEP_KEY_CACHE_SECONDS. Failing the request
        # now would report a committed change as failed.
        try:
            await self.client.publish(self.channel, message)
        except (RedisError, OSError) as exc:
            logger.error(
                "cache invalidation %s not published (%s): other nodes drop it when their "
                "cache entry expires",
                message,
                type(exc).__name__,
            )

    def apply(self, message: str) -> None:
        """Drop what one published message names; anything else on the channel is ignored."""
        kind, _, value = message.partition(":")
        try:
            target = uuid.UUID(value)
        except ValueError:
            logger.warning("ignored a malformed invalidation message")
            return
        if kind == "key":
            self.cache.drop_key(target)
        elif kind == "user":
            self.cache.drop_user(target)
        else:
            return
        self.received += 1

    async def start(self, database: Database) -> None:
        """Subscribe now if Redis answers (so the node is listening once it reports ready),
        then keep listening — and resubscribing after failures — in the background."""
        with contextlib.suppress(RedisError, OSError):
            await self._subscribe()
        self._task = asyncio.create_task(self._listen(), name="redis-invalidations")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._close_pubsub()

    async def _subscribe(self) -> PubSub:
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self.channel)
        except BaseException:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
            raise
        self._pubsub = pubsub
        self.subscribed.set()
        return pubsub

    async def _close_pubsub(self) -> None:
        self.subscribed.clear()
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _listen(self) -> None:
        failures = 0
        while True:
            try:
                pubsub = self._pubsub
                if pubsub is None:
                    pubsub = await self._subscribe()
                    # Messages sent while we were away are lost: trust nothing cached.
                    self.cache.clear()
                    logger.info("cache invalidations: subscribed again; local key cache emptied")
                failures = 0
                while True:
                    message = await pubsub.get_message(timeout=POLL_SECONDS)
                    if message is not None and message.get("type") == "message":
                        data = message["data"]
                        self.apply(data.decode() if isinstance(data, bytes) else str(data))
            except (RedisError, OSError) as exc:
                await self._close_pubsub()
                delay = RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)]
                failures += 1
                logger.warning(
                    "cache invalidations: Redis subscription lost (%s); retrying in %.1f s",
                    type(exc).__name__,
                    delay,
                )
                await asyncio.sleep(delay)
