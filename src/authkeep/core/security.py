"""Secrets and their digests: argon2id password hashing behind a concurrency cap, random tokens
and their hashes, constant-time comparison.

Password hashing runs in a small thread pool of its own (one thread per core by default), never
on the event loop and never while a database connection is held by the caller's design: hash
first, then open the unit of work. When more than `hash_queue_limit` hashes wait, new ones are
refused at once with 503 instead of queueing without bound (RELIABILITY FI-DOS-01).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from authkeep.errors import AuthkeepError

T = TypeVar("T")

# OWASP / RELIABILITY CHK-PS-01 row: m=19 MiB, t=2, p=1; 16-byte salt, 32-byte hash.
ARGON2_MEMORY_KIB = 19_456
ARGON2_TIME_COST = 2
ARGON2_PARALLELISM = 1
TOKEN_BYTES = 32


class HashingOverloaded(AuthkeepError):
    code = "overloaded"
    status_code = 503
    detail = "Too many sign-ins at once. Try again in a moment."
    headers = {"Retry-After": "1"}


def new_token(nbytes: int = TOKEN_BYTES) -> str:
    """A URL-safe random token with `nbytes` bytes (≥ 128 bits) from the OS CSPRNG."""
    return secrets.token_urlsafe(nbytes)


def token_digest(token: str) -> str:
    """The stored form of a high-entropy token: SHA-256 hex. Lookups go by digest."""
    return hashlib.sha256(token.encode()).hexdigest()


def keyed_digest(key: str, value: str) -> str:
    """HMAC-SHA-256 hex of `value` under a server secret."""
    return hmac.new(key.encode(), value.encode(), hashlib.sha256).hexdigest()


def same_secret(a: str, b: str) -> bool:
    """Constant-time equality for secrets (CHK-CR-02)."""
    return hmac.compare_digest(a.encode(), b.encode())


def default_hash_workers() -> int:
    """Hashing threads when AUTHKEEP_HASH_CONCURRENCY is unset: one per core but one, so the
    event loop, the database driver and health checks keep a core during a login storm.

    Measured on 2 cores (bench/bench_identity.py, SQLite, two runs each): with 2 hashing
    threads, 25 and 39 sign-ins/s at a p99 of 2.4 and 0.92 s; with 1 thread, 34 and 29/s at a
    p99 of 0.36 and 0.39 s. Throughput is a wash on this machine; the tail is not."""
    return max(1, (os.cpu_count() or 2) - 1)


@dataclass
class PasswordHashing:
    """argon2id with a bounded worker pool. One per process (it owns threads)."""

    workers: int = field(default_factory=default_hash_workers)
    queue_limit: int = 64
    memory_kib: int = ARGON2_MEMORY_KIB
    time_cost: int = ARGON2_TIME_COST
    hash_calls: int = 0
    verify_calls: int = 0

    def __post_init__(self) -> None:
        self.hasher = PasswordHasher(
            time_cost=self.time_cost,
            memory_cost=self.memory_kib,
            parallelism=ARGON2_PARALLELISM,
            hash_len=32,
            salt_len=16,
            type=Type.ID,
        )
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="argon2")
        self._waiting = 0
        # A fixed hash at current parameters: unknown users are verified against it so both
        # branches cost the same (CHK-EN-02).
        self._dummy_hash = self.hasher.hash(secrets.token_urlsafe(16))

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._waiting >= self.queue_limit:
            raise HashingOverloaded()
        self._waiting += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        finally:
            self._waiting -= 1

    async def hash(self, password: str) -> str:
        self.hash_calls += 1
        result: str = await self._run(self.hasher.hash, password)
        return result

    async def verify(self, stored: str | None, password: str) -> tuple[bool, bool]:
        """(matches, needs_rehash). A missing hash is checked against the dummy, then fails."""
        self.verify_calls += 1
        target = stored or self._dummy_hash
        ok: bool = await self._run(self._verify_sync, target, password)
        if stored is None or not ok:
            return False, False
        return True, self.hasher.check_needs_rehash(stored)

    async def burn(self, password: str) -> None:
        """Spend the same work as a real verification, for branches that must not be faster."""
        await self.verify(None, password)

    def _verify_sync(self, stored: str, password: str) -> bool:
        try:
            return bool(self.hasher.verify(stored, password))
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
