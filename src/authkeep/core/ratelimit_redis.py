"""The Redis rate limiter: the `RateLimiter` protocol shared by every node (SPEC §9, CHK-AK-06).

Same decisions as `MemoryRateLimiter` — an exact sliding log of (time, cost) events, refused
events take nothing, `refund` takes the newest event back — kept in Redis so every node counts
against one budget. Each call is one Lua script, so a check and its record are atomic however many
nodes race. The clock is Redis's own (`TIME`), so nodes whose clocks disagree still agree on the
window. Per key: a sorted set of events (score = microseconds, member = `<cost>:<unique id>`) and
the running total of their costs, both expiring one window after the last write.

Redis errors (unreachable, timeout) raise `LimiterUnavailable`, a 503 with `Retry-After`:
limits fail closed rather than letting traffic through uncounted.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.asyncio import Redis
from redis.exceptions import RedisError

from authkeep.core.ratelimit import Decision
from authkeep.errors import LimiterUnavailable

DEFAULT_PREFIX = "authkeep:rl:"
MICROS = 1_000_000
T = TypeVar("T")

# KEYS: [1] the event log (sorted set: score = µs, member = `<seq>:<cost>`, seq zero-padded so
# equal scores keep insertion order), [2] its meta hash (`used` = running total, `seq`).
# ARGV: limit, window (µs), cost, record (1 = hit, 0 = peek), now (µs) or "" for Redis's TIME.
# Returns {allowed, remaining, retry_after, reset}, whole seconds.
_DECIDE = """
local log, meta = KEYS[1], KEYS[2]
local limit, window, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local now
if ARGV[5] ~= '' then
  now = tonumber(ARGV[5])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function parse(member)
  local seq, units = string.match(member, '^(%d+):(%d+)$')
  return tonumber(seq), tonumber(units)
end
local function seconds_until(score)
  return math.ceil((score + window - now) / 1000000)
end
local used, seq = 0, 0
if redis.call('EXISTS', log) == 1 then
  local stored = redis.call('HMGET', meta, 'used', 'seq')
  local dirty = not (stored[1] and stored[2])
  if dirty then
    for _, member in ipairs(redis.call('ZRANGE', log, 0, -1)) do
      local s, units = parse(member)
      used, seq = used + units, math.max(seq, s)
    end
  else
    used, seq = tonumber(stored[1]), tonumber(stored[2])
  end
  local horizon = now - window
  local expired = redis.call('ZRANGEBYSCORE', log, '-inf', horizon)
  for _, member in ipairs(expired) do
    local _, units = parse(member)
    used = used - units
  end
  if #expired > 0 then
    redis.call('ZREMRANGEBYSCORE', log, '-inf', horizon)
    dirty = true
  end
  if redis.call('EXISTS', log) == 0 then
    redis.call('DEL', meta)
    used, seq = 0, 0
  elseif dirty then
    redis.call('HSET', meta, 'used', used, 'seq', seq)
    local ttl = redis.call('PTTL', log)
    if ttl > 0 then
      redis.call('PEXPIRE', meta, ttl)
    end
  end
end
local oldest = redis.call('ZRANGE', log, 0, 0, 'WITHSCORES')
local reset = 0
if #oldest > 0 then
  reset = seconds_until(tonumber(oldest[2]))
end
if used + cost > limit then
  local remaining = math.max(0, limit - used)
  local events = redis.call('ZRANGE', log, 0, -1, 'WITHSCORES')
  local freed = 0
  for i = 1, #events, 2 do
    local _, units = parse(events[i])
    freed = freed + units
    if used - freed + cost <= limit then
      return {0, remaining, math.max(1, seconds_until(tonumber(events[i + 1]))), reset}
    end
  end
  return {0, remaining, math.max(1, math.ceil(window / 1000000)), reset}
end
if ARGV[4] == '0' or cost == 0 then
  return {1, limit - used, 0, reset}
end
seq = seq + 1
local ttl = math.ceil(window / 1000) + 1
redis.call('ZADD', log, now, string.format('%020d:%d', seq, cost))
redis.call('HSET', meta, 'used', used + cost, 'seq', seq)
redis.call('PEXPIRE', log, ttl)
redis.call('PEXPIRE', meta, ttl)
if #oldest == 0 then
  reset = seconds_until(now)
end
return {1, limit - used - cost, 0, reset}
"""

# KEYS: [1] event log, [2] meta. Takes the newest event back; returns its cost (0 if none).
_REFUND = """
local newest = redis.call('ZPOPMAX', KEYS[1])
if #newest == 0 then
  return 0
end
local units = tonumber(string.match(newest[1], ':(%d+)$'))
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[2])
elseif redis.call('HEXISTS', KEYS[2], 'used') == 1 then
  redis.call('HINCRBY', KEYS[2], 'used', -units)
end
return units
"""


class RedisRateLimiter:
    """Sliding-window limiter in Redis (see module doc). `clock` is for tests only: when given,
    its time (seconds) replaces Redis's `TIME`, so a property test can replay any arrival
    sequence against the real script."""

    def __init__(
        self,
        client: Redis,
        prefix: str = DEFAULT_PREFIX,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.clock = clock
        self.denied = 0
        self._decide = client.register_script(_DECIDE)
        self._refund = client.register_script(_REFUND)

    def _keys(self, key: str) -> list[str]:
        # One hash tag, so both keys live in the same slot on a Redis Cluster.
        log = f"{self.prefix}{{{key}}}"
        return [log, f"{log}:meta"]

    async def _run(self, key: str, limit: int, window: float, cost: int, record: bool) -> Decision:
        now = "" if self.clock is None else str(round(self.clock() * MICROS))
        args: list[int | str] = [limit, round(window * MICROS), cost, int(record), now]
        answer = await guarded(self._decide(keys=self._keys(key), args=args))
        allowed, remaining, retry_after, reset = (int(value) for value in answer)
        return Decision(bool(allowed), remaining, retry_after, reset)

    async def hit(self, key: str, limit: int, window_seconds: float, cost: int = 1) -> Decision:
        decision = await self._run(key, limit, window_seconds, cost, record=True)
        if not decision.allowed:
            self.denied += 1
        return decision

    async def peek(self, key: str, limit: int, window_seconds: float) -> Decision:
        return await self._run(key, limit, window_seconds, 1, record=False)

    async def refund(self, key: str) -> None:
        await guarded(self._refund(keys=self._keys(key)))

    async def reset(self, key: str) -> None:
        await guarded(self.client.delete(*self._keys(key)))


async def guarded(call: Awaitable[T]) -> T:
    """Await a Redis call; any Redis or socket failure becomes `LimiterUnavailable` (503)."""
    try:
        return await call
    except (RedisError, OSError) as exc:
        raise LimiterUnavailable() from exc
