"""The one Redis client an app uses when `AUTHKEEP_REDIS_URL` is set (SPEC §9): rate-limit
counters (`core.ratelimit_redis`) and cache invalidations (`core.redis_bus`) share it.

Short timeouts and a single quick retry: a Redis that is down must cost a request milliseconds
and a clear 503, not seconds of backoff. The URL may carry a password, so it never appears in
an error or a log line.
"""

from __future__ import annotations

import logging

from pydantic import SecretStr
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError

from authkeep.core.db import Database
from authkeep.errors import ConfigError

logger = logging.getLogger("authkeep.redis")

CONNECT_TIMEOUT_SECONDS = 1.0
COMMAND_TIMEOUT_SECONDS = 1.0


def connect(url: SecretStr) -> Redis:
    """A client for `url` (no connection is made until first use)."""
    try:
        client: Redis = Redis.from_url(
            url.get_secret_value(),
            socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
            socket_timeout=COMMAND_TIMEOUT_SECONDS,
            retry=Retry(ExponentialBackoff(cap=0.05, base=0.01), retries=1),
        )
    except ValueError:
        raise ConfigError(
            "AUTHKEEP_REDIS_URL is not a valid redis://, rediss:// or unix:// URL."
        ) from None
    return client


class RedisConnection:
    """Background service owning the client: checks it at start (a warning, not a refusal to
    start: limited routes answer 503 until Redis answers) and closes it at shutdown. Register
    it before the services that use the client, so it stops after them."""

    def __init__(self, client: Redis) -> None:
        self.client = client

    async def start(self, database: Database) -> None:
        try:
            await self.client.ping()
        except (RedisError, OSError) as exc:
            logger.warning(
                "Redis (AUTHKEEP_REDIS_URL) is not reachable (%s): rate-limited routes answer "
                "503 until it is",
                type(exc).__name__,
            )

    async def stop(self) -> None:
        await self.client.aclose()
