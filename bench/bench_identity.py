"""Sign-in and session-check throughput, as ratios measured in one run on one server.

- sign-in req/s ÷ raw argon2id verifications/s at the same parameters on the same machine
  (target ≥ 0.9: sign-in should be bound only by the hash);
- session check (`GET /api/auth/session`, bearer) req/s ÷ `GET /health` req/s on the same server.

Usage: `python bench/bench_identity.py [--seconds 8] [--concurrency 8]`
(`BENCH_DATABASE_URL=postgresql://…` runs the server on PostgreSQL instead of SQLite.)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from argon2 import PasswordHasher, Type
from harness import load, running_server

from authkeep.core.security import ARGON2_MEMORY_KIB, ARGON2_PARALLELISM, ARGON2_TIME_COST


def raw_argon2_verifies_per_second(seconds: float) -> float:
    """Verifications/s with one thread per core, the same pool shape the server uses."""
    hasher = PasswordHasher(
        time_cost=ARGON2_TIME_COST,
        memory_cost=ARGON2_MEMORY_KIB,
        parallelism=ARGON2_PARALLELISM,
        hash_len=32,
        salt_len=16,
        type=Type.ID,
    )
    password = secrets.token_urlsafe(16)
    stored = hasher.hash(password)
    workers = os.cpu_count() or 2
    deadline = time.perf_counter() + seconds

    def spin() -> int:
        done = 0
        while time.perf_counter() < deadline:
            hasher.verify(stored, password)
            done += 1
        return done

    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        total = sum(pool.map(lambda _: spin(), range(workers)))
    return total / (time.perf_counter() - started)


async def measure(url: str, seconds: float, concurrency: int) -> None:
    email = f"bench-{secrets.token_hex(4)}@example.com"
    password = secrets.token_urlsafe(24)
    async with httpx.AsyncClient(base_url=url) as client:
        signed_up = await client.post(
            "/api/auth/sign-up", json={"email": email, "password": password}
        )
        assert signed_up.status_code == 202, signed_up.text
        first = await client.post("/api/auth/sign-in", json={"email": email, "password": password})
        assert first.status_code == 200, first.text
        token = first.json()["token"]

    def sign_in(c: httpx.AsyncClient):  # type: ignore[no-untyped-def]
        return c.post("/api/auth/sign-in", json={"email": email, "password": password})

    def session(c: httpx.AsyncClient):  # type: ignore[no-untyped-def]
        return c.get("/api/auth/session", headers={"Authorization": f"Bearer {token}"})

    def hello(c: httpx.AsyncClient):  # type: ignore[no-untyped-def]
        return c.get("/health")

    signins = await load(sign_in, base_url=url, concurrency=concurrency, seconds=seconds)
    health = await load(hello, base_url=url, concurrency=concurrency, seconds=seconds)
    sessions = await load(session, base_url=url, concurrency=concurrency, seconds=seconds)
    raw = raw_argon2_verifies_per_second(seconds)

    print(
        f"raw argon2id verify (m={ARGON2_MEMORY_KIB} KiB, t={ARGON2_TIME_COST}, "
        f"p={ARGON2_PARALLELISM}, {os.cpu_count()} threads): {raw:9.1f} /s"
    )
    print(signins.line("POST /api/auth/sign-in"))
    print(health.line("GET /health (hello world)"))
    print(sessions.line("GET /api/auth/session"))
    print(f"sign-in / raw argon2id          = {signins.rps / raw:.2f}   (target >= 0.9)")
    print(f"session check / hello-world     = {sessions.rps / health.rps:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    env = {}
    if os.environ.get("BENCH_DATABASE_URL"):
        env["DATABASE_URL"] = os.environ["BENCH_DATABASE_URL"]
    with running_server(env) as url:
        asyncio.run(measure(url, args.seconds, args.concurrency))


if __name__ == "__main__":
    main()
