"""Progressive sign-in delays per identifier (CHK-BF-02/03/05, CHK-EN-01/03).

After failure k of a run of consecutive failures for one sign-in identifier, the next attempt
must wait `Schedule.seconds(k)`: nothing for the first `login_delay_after` failures, then
`login_delay_base_seconds` doubling with each failure up to `login_delay_max_seconds`. An
attempt made before then is refused (429 `rate_limited` with `Retry-After`) before any lookup
or hashing. A correct password clears the run, and so does a completed password reset.

The state is keyed by the canonical email digested with the server secret (`delay_key`), never
by whether an account exists, so unknown addresses get exactly the same waits (CHK-EN-03), and
no store holds an address. Flows that check a password by user id pass the account's email, so
they share its run.

Each attempt is admitted and counted in one atomic step (`admit`), before the password is
checked: concurrent guesses cannot slip in during a wait. An attempt that is never judged
(hashing overloaded, database error) is taken back (`release`). Times are wall-clock seconds
(`time.time`): the Redis backend stores absolute times too, so nodes must keep their clocks
in sync (NTP) — a skew of s seconds between nodes shifts a wait by at most s. A run that sees
no failure for `FORGET_AFTER_SECONDS` (12 hours, Keycloak's failure reset time) is forgotten.

Backends: `MemoryDelays` (one process, at most `max_keys` identifiers, least recently used
dropped first) and `RedisDelays` (every node shares the runs; Redis errors raise
`LimiterUnavailable`, 503: fail closed). Only the Redis runs can be ended from outside the
server (`end_shared_delay`, for the CLI).
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from redis.asyncio import Redis
from starlette.applications import Starlette

from authkeep.config import Settings
from authkeep.core import redis_client
from authkeep.core.ratelimit_redis import guarded
from authkeep.core.secrets import secret_for
from authkeep.core.security import keyed_digest
from authkeep.errors import LimiterUnavailable
from authkeep.users.service import InvalidEmail, canonical_email

logger = logging.getLogger("authkeep.delays")

MICROS = 1_000_000
FORGET_AFTER_SECONDS = 12 * 3600
DEFAULT_MAX_KEYS = 50_000
DEFAULT_PREFIX = "authkeep:delay:"


@dataclass(frozen=True)
class Schedule:
    """The waits: none for the first `after` failures, then `base` doubling up to `most`."""

    after: int
    base: float
    most: float

    @classmethod
    def of(cls, settings: Settings) -> Schedule:
        return cls(
            settings.login_delay_after,
            settings.login_delay_base_seconds,
            settings.login_delay_max_seconds,
        )

    def micros(self, failures: int) -> int:
        """The wait after failure number `failures` of a run, in whole microseconds (the
        Redis script computes the same numbers)."""
        if failures <= self.after:
            return 0
        # Capped exponent: 2**64 µs is past every allowed maximum.
        exponent = min(failures - self.after - 1, 64)
        return min(round(self.most * MICROS), round(self.base * MICROS) << exponent)


def delay_key(settings: Settings, email: str) -> str:
    """The identifier's key: its canonical email under the server secret (an address that is
    not canonicalisable is keyed as typed, so it still has a run of its own)."""
    try:
        identifier = canonical_email(email)
    except InvalidEmail:
        identifier = email
    secret = secret_for(settings, "secret_key").get_secret_value()
    return keyed_digest(secret, f"sign-in:{identifier}")


class SignInDelays(Protocol):
    """What every backend offers. `admit` returns 0 when the attempt may go ahead (it is then
    counted as the next failure of the run), else the seconds it must still wait."""

    async def admit(self, key: str, schedule: Schedule) -> float: ...

    async def release(self, key: str) -> None: ...

    async def clear(self, key: str) -> None: ...


@dataclass(slots=True)
class _Run:
    failures: int
    not_before: int  # µs since the epoch
    previous: int  # `not_before` before the last admitted attempt, for `release`
    expires: int


class MemoryDelays:
    """The runs of one process; every method runs without awaiting, so it is atomic on one
    event loop. At most `max_keys` identifiers, the least recently used dropped first."""

    def __init__(
        self, max_keys: int = DEFAULT_MAX_KEYS, clock: Callable[[], float] = time.time
    ) -> None:
        self.max_keys = max_keys
        self.clock = clock
        self._runs: OrderedDict[str, _Run] = OrderedDict()

    def _now(self) -> int:
        return round(self.clock() * MICROS)

    def _live(self, key: str, now: int) -> _Run | None:
        run = self._runs.get(key)
        if run is not None and run.expires <= now:
            del self._runs[key]
            return None
        return run

    async def admit(self, key: str, schedule: Schedule) -> float:
        now = self._now()
        run = self._live(key, now)
        if run is not None and now < run.not_before:
            self._runs.move_to_end(key)
            return (run.not_before - now) / MICROS
        if run is None:
            run = _Run(0, 0, 0, 0)
            self._runs[key] = run
            while len(self._runs) > self.max_keys:
                self._runs.popitem(last=False)
        else:
            self._runs.move_to_end(key)
        run.failures += 1
        run.previous = run.not_before
        run.not_before = now + schedule.micros(run.failures)
        run.expires = run.not_before + FORGET_AFTER_SECONDS * MICROS
        return 0.0

    async def release(self, key: str) -> None:
        run = self._runs.get(key)
        if run is not None and run.failures > 0:
            run.failures -= 1
            run.not_before = run.previous

    async def clear(self, key: str) -> None:
        self._runs.pop(key, None)

    def __len__(self) -> int:
        return len(self._runs)


# KEYS: [1] the run (hash: failures, not_before, previous; times in µs since the epoch).
# ARGV: now µs, after, base µs, max µs, forget µs. Returns the wait in µs (0 = admitted), as a
# string (Lua numbers come back from Redis truncated to integers, and may exceed them).
_ADMIT = """
local now, after = tonumber(ARGV[1]), tonumber(ARGV[2])
local base, most, forget = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local run = redis.call('HMGET', KEYS[1], 'failures', 'not_before')
local failures, not_before = tonumber(run[1]) or 0, tonumber(run[2]) or 0
if now < not_before then
  return string.format('%d', not_before - now)
end
failures = failures + 1
local wait = 0
if failures > after then
  wait = math.min(most, base * 2 ^ math.min(failures - after - 1, 64))
end
wait = math.floor(wait + 0.5)
redis.call('HSET', KEYS[1], 'failures', failures, 'not_before', string.format('%d', now + wait),
  'previous', string.format('%d', not_before))
redis.call('PEXPIRE', KEYS[1], math.ceil((wait + forget) / 1000))
return '0'
"""

_RELEASE = """
local run = redis.call('HMGET', KEYS[1], 'failures', 'previous')
local failures = tonumber(run[1]) or 0
if failures > 0 then
  redis.call('HSET', KEYS[1], 'failures', failures - 1, 'not_before', run[2] or '0')
end
return failures
"""


class RedisDelays:
    """The runs in Redis, shared by every node (see module doc). One Lua script per call, so
    admitting and counting an attempt is atomic however many nodes race."""

    def __init__(
        self,
        client: Redis,
        prefix: str = DEFAULT_PREFIX,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.clock = clock
        self._admit = client.register_script(_ADMIT)
        self._release = client.register_script(_RELEASE)

    async def admit(self, key: str, schedule: Schedule) -> float:
        args = [
            round(self.clock() * MICROS),
            schedule.after,
            round(schedule.base * MICROS),
            round(schedule.most * MICROS),
            FORGET_AFTER_SECONDS * MICROS,
        ]
        wait = await guarded(self._admit(keys=[self.prefix + key], args=args))
        return int(wait) / MICROS

    async def release(self, key: str) -> None:
        await guarded(self._release(keys=[self.prefix + key]))

    async def clear(self, key: str) -> None:
        await guarded(self.client.delete(self.prefix + key))


def delays_for(app: Starlette) -> SignInDelays:
    """The app's delay store: `app.state.sign_in_delays`, else an in-process one created on
    first use."""
    delays: SignInDelays | None = getattr(app.state, "sign_in_delays", None)
    if delays is None:
        delays = MemoryDelays()
        app.state.sign_in_delays = delays
    return delays


def retry_after(wait: float) -> int:
    """`Retry-After` for a wait: whole seconds, rounded up."""
    return max(1, math.ceil(wait))


async def end_shared_delay(settings: Settings, email: str) -> bool:
    """From outside the server (`authkeep users create-admin` setting a password): end the
    address's delay in Redis. False when there is no shared store — without
    AUTHKEEP_REDIS_URL the delay lives in the server's memory, out of reach — or when Redis
    did not answer (logged; the wait then runs out by itself)."""
    if settings.redis_url is None:
        return False
    client = redis_client.connect(settings.redis_url)
    try:
        await RedisDelays(client).clear(delay_key(settings, email))
    except LimiterUnavailable:
        logger.warning("Redis did not answer: the address's sign-in delay runs out by itself")
        return False
    finally:
        await client.aclose()
    return True
