"""Sign-in and session-check throughput, as ratios measured in one run on one server.

- sign-in req/s ÷ raw argon2id verifications/s: the raw figure is bare `argon2.verify` calls
  from as many threads as the server's hashing pool (`--hash-threads`, passed to the server as
  AUTHKEEP_HASH_CONCURRENCY) with the server's own parameters (m=19456 KiB, t=2, p=1), measured
  right before and right after the sign-in load (target ≥ 0.9: sign-in bound only by the hash);
- session check (`GET /api/auth/session`, bearer) req/s ÷ `GET /health` req/s on the same server.

Each phase also prints CPU per request of the server process and of this load generator, and
the sign-in's CPU account: what the hash costs, what the server spends outside it, and the
ceiling those figures leave for the ratio when client and server share the cores.

Usage: `python bench/bench_identity.py [--seconds 8] [--concurrency 8] [--hash-threads N]
[--database-url postgresql://…]` (or BENCH_DATABASE_URL; a PostgreSQL database must be migrated:
`DATABASE_URL=… authkeep db migrate`).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
from harness import (
    UNLIMITED_API,
    LoadResult,
    Server,
    machine_cpu_seconds,
    raw_load,
    raw_request,
    started_server,
)

from authkeep.core.security import (
    ARGON2_MEMORY_KIB,
    ARGON2_PARALLELISM,
    ARGON2_TIME_COST,
    PasswordHashing,
    default_hash_workers,
)


@dataclass
class RawHashing:
    """Bare argon2id verifications from a pool of threads: how many, in how long, at what CPU."""

    verifies: int
    seconds: float
    cpu_seconds: float

    @property
    def rate(self) -> float:
        return self.verifies / self.seconds

    def __add__(self, other: RawHashing) -> RawHashing:
        return RawHashing(
            self.verifies + other.verifies,
            self.seconds + other.seconds,
            self.cpu_seconds + other.cpu_seconds,
        )


def raw_argon2_verifies(seconds: float, threads: int) -> RawHashing:
    """Bare argon2id verifies from `threads` threads for `seconds`, with the hasher the server
    builds (same parameters); each thread's CPU time is counted too."""
    hashing = PasswordHashing(workers=1)
    hasher = hashing.hasher
    hashing.close()
    password = secrets.token_urlsafe(16)
    stored = hasher.hash(password)
    deadline = time.perf_counter() + seconds

    def spin() -> tuple[int, float]:
        done = 0
        cpu = time.thread_time()
        while time.perf_counter() < deadline:
            hasher.verify(stored, password)
            done += 1
        return done, time.thread_time() - cpu

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        spun = list(pool.map(lambda _: spin(), range(threads)))
    elapsed = time.perf_counter() - started
    return RawHashing(sum(n for n, _ in spun), elapsed, sum(c for _, c in spun))


def cpu_account(signins: LoadResult, raw: RawHashing, threads: int) -> list[str]:
    """Where one sign-in's CPU goes, and the ratio that leaves. With every core busy, sign-ins
    run at cores / (hash + outside + client) per second and the raw figure at
    min(threads, cores) / hash, so the ratio cannot pass their quotient: on a machine whose
    cores the load generator shares, the hash's share of a sign-in's CPU."""
    cores = os.cpu_count() or 1
    hash_ms = 1000 * raw.cpu_seconds / raw.verifies  # one verify's CPU, with the pool's shape
    server_ms = signins.server_cpu_ms or 0.0
    outside_ms = server_ms - hash_ms
    client_ms = signins.client_cpu_ms
    per_signin_ms = hash_ms + max(outside_ms, 0.0) + client_ms
    ceiling = min(1.0, cores / min(threads, cores) * hash_ms / per_signin_ms)
    return [
        f"sign-in CPU account ({cores} cores): argon2id {hash_ms:.1f} ms + server outside the "
        f"hash {outside_ms:.1f} ms + load generator {client_ms:.1f} ms per sign-in",
        f"ceiling those leave for sign-in / raw = {ceiling:.2f}",
    ]


async def measure(server: Server, seconds: float, concurrency: int, threads: int) -> None:
    # One account per connection, as many users signing in at once would: concurrent attempts
    # on one address share its progressive-delay run (users/delays.py), and a burst of more
    # than `AUTHKEEP_LOGIN_DELAY_AFTER` in flight for one address is refused by design.
    accounts = [
        {
            "email": f"bench-{secrets.token_hex(4)}@example.com",
            "password": secrets.token_urlsafe(24),
        }
        for _ in range(concurrency)
    ]
    async with httpx.AsyncClient(base_url=server.url) as client:
        for credentials in accounts:
            signed_up = await client.post("/api/auth/sign-up", json=credentials)
            assert signed_up.status_code == 202, signed_up.text
    credentials = accounts[0]

    # An API client: the token from the body, no cookie jar (a browser would also send the
    # previous session's cookie, which the sign-in then ends: one more statement).
    json_body = {"Content-Type": "application/json"}
    sign_in = [
        raw_request("POST", "/api/auth/sign-in", json_body, json.dumps(account))
        for account in accounts
    ]
    hello = raw_request("GET", "/health", {})
    run = functools.partial(raw_load, server=server, concurrency=concurrency, seconds=seconds)

    before = raw_argon2_verifies(seconds / 2, threads)
    machine = machine_cpu_seconds()
    signins = await run(sign_in)
    machine = machine_cpu_seconds() - machine
    after = raw_argon2_verifies(seconds / 2, threads)
    raw = before + after
    health = await run(hello)
    async with httpx.AsyncClient(base_url=server.url) as client:
        # After the sign-in phase, whose sessions evicted the oldest past the per-user cap.
        signed_in = await client.post("/api/auth/sign-in", json=credentials)
        assert signed_in.status_code == 200, signed_in.text
    bearer = {"Authorization": f"Bearer {signed_in.json()['token']}"}
    sessions = await run(raw_request("GET", "/api/auth/session", bearer))

    print(
        f"raw argon2id verify (m={ARGON2_MEMORY_KIB} KiB, t={ARGON2_TIME_COST}, "
        f"p={ARGON2_PARALLELISM}, {threads} threads): {raw.rate:9.1f} /s "
        f"(before {before.rate:.1f}, after {after.rate:.1f})"
    )
    print(signins.line("POST /api/auth/sign-in"))
    print(health.line("GET /health (hello world)"))
    print(sessions.line("GET /api/auth/session"))
    print(f"sign-in / raw argon2id          = {signins.rps / raw.rate:.2f}   (target >= 0.9)")
    print(f"session check / hello-world     = {sessions.rps / health.rps:.2f}")
    for line in cpu_account(signins, raw, threads):
        print(line)
    elsewhere = machine - (signins.server_cpu_seconds or 0.0) - signins.client_cpu_seconds
    print(
        f"other processes during the sign-ins (the database server, anything else running): "
        f"{1000 * elsewhere / signins.requests:.1f} ms CPU per sign-in"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--hash-threads",
        type=int,
        default=int(os.environ.get("AUTHKEEP_HASH_CONCURRENCY") or default_hash_workers()),
        help="the server's hashing pool size, and the raw figure's threads (default: the "
        "server's own default, cores - 1)",
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL"),
        help="run the server on this database (default: SQLite in a scratch directory)",
    )
    args = parser.parse_args()
    env = {**UNLIMITED_API, "AUTHKEEP_HASH_CONCURRENCY": str(args.hash_threads)}
    if args.database_url:
        env["DATABASE_URL"] = args.database_url
    load_1, load_5, _ = os.getloadavg()
    engine = "postgresql" if args.database_url else "sqlite"
    print(
        f"{engine}, concurrency {args.concurrency}, {args.seconds:g} s per phase, "
        f"{os.cpu_count()} cores, load average before the run {load_1:.2f} / {load_5:.2f}"
    )
    with started_server(env) as server:
        asyncio.run(measure(server, args.seconds, args.concurrency, args.hash_threads))


if __name__ == "__main__":
    main()
