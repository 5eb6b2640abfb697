"""API key verification throughput, as ratios to the same server's hello-world (`GET /health`).

Three `authkeep serve` processes side by side, each with its own hello-world baseline:

- `cached`   (defaults): verify answered from the server's key cache (same key, no credits,
  no rate limits) — target >= 0.7 x hello-world;
- `uncached` (AUTHKEEP_KEY_CACHE_SECONDS=0): every verify reads the database;
- `unmetered` (AUTHKEEP_USAGE_METERING=false): the cache-hit path without usage counting, so
  metering cost = 1 - (cached ratio / unmetered ratio) — target <= 10 %.

Rounds alternate over every route of every server (cached hello, cached verify, uncached
hello, …), so drift on a busy machine hits all of them alike. Two kinds of ratio are printed:
req/s (what a client sees; the load generator shares the machine) and server CPU per request
(the server process's CPU time over the same window: robust when other work competes for the
cores). Also printed: the Python client's own cache hit (`AuthkeepClient.verify_key` answered
in process), in calls/s.

Usage: `python bench/bench_keys.py [--seconds 4] [--rounds 3] [--concurrency 8] [--json PATH]`
(`BENCH_DATABASE_URL=postgresql://…` runs the servers on PostgreSQL instead of SQLite.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import httpx
from harness import LoadResult, Server, raw_load, raw_request, started_server

from authkeep.client import AuthkeepClient
from authkeep.keys.schemas import VerifyRequest

VERIFY_BODY = VerifyRequest().model_dump_json()
SERVERS: dict[str, dict[str, str]] = {
    "cached": {},
    "uncached": {"AUTHKEEP_KEY_CACHE_SECONDS": "0"},
    "unmetered": {"AUTHKEEP_USAGE_METERING": "false"},
}
TARGET_CACHE_HIT = 0.7
TARGET_METERING_COST = 0.10


@dataclass
class Merged:
    """Several rounds of one route, summed."""

    results: list[LoadResult] = field(default_factory=list)

    @property
    def cpu_ms_per_request(self) -> float:
        """The server's CPU per request (ms)."""
        cpu = self.total.server_cpu_ms
        assert cpu is not None
        return cpu

    @property
    def total(self) -> LoadResult:
        return LoadResult(
            requests=sum(r.requests for r in self.results),
            seconds=sum(r.seconds for r in self.results),
            latencies_ms=[ms for r in self.results for ms in r.latencies_ms],
            errors=sum(r.errors for r in self.results),
            client_cpu_seconds=sum(r.client_cpu_seconds for r in self.results),
            server_cpu_seconds=sum(r.server_cpu_seconds or 0.0 for r in self.results),
        )


async def new_key(url: str) -> str:
    """Sign up, sign in and create a key without credits or rate limits."""
    email = f"bench-{secrets.token_hex(4)}@example.com"
    password = secrets.token_urlsafe(24)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        signed_up = await client.post(
            "/api/auth/sign-up", json={"email": email, "password": password}
        )
        assert signed_up.status_code == 202, signed_up.text
        signed_in = await client.post(
            "/api/auth/sign-in", json={"email": email, "password": password}
        )
        assert signed_in.status_code == 200, signed_in.text
        created = await client.post(
            "/api/keys",
            json={"name": "bench"},
            headers={"Authorization": f"Bearer {signed_in.json()['token']}"},
        )
        assert created.status_code == 201, created.text
        key: str = created.json()["key"]
    return key


async def requests_for(server: Server) -> dict[str, bytes]:
    """The two requests measured on `server`: hello-world, and verify with a fresh key."""
    key = await new_key(server.url)
    requests = {
        "hello": raw_request("GET", "/health", {}),
        "verify": raw_request(
            "POST",
            "/api/keys/verify",
            {"X-API-Key": key, "Content-Type": "application/json"},
            VERIFY_BODY,
        ),
    }
    check = await raw_load(requests["verify"], server, concurrency=1, seconds=0.2)
    assert check.requests > 0, "verify did not answer"
    assert check.errors == 0, "verify did not answer 200"
    return requests


async def measure(
    servers: dict[str, Server], rounds: int, seconds: float, concurrency: int
) -> dict[str, dict[str, Merged]]:
    """Each round measures every route of every server in turn, so drift on a busy machine
    reaches all of them alike."""
    requests = {name: await requests_for(server) for name, server in servers.items()}
    merged = {name: {route: Merged() for route in r} for name, r in requests.items()}
    for _ in range(rounds):
        for name, server in servers.items():
            for route, request in requests[name].items():
                result = await raw_load(request, server, concurrency=concurrency, seconds=seconds)
                merged[name][route].results.append(result)
    return merged


async def client_cache_hits(url: str, seconds: float) -> float:
    """`AuthkeepClient.verify_key` calls/s once the answer is in the client's own cache."""
    key = await new_key(url)
    async with AuthkeepClient(url, cache_ttl=300) as authkeep:
        assert (await authkeep.verify_key(key)).valid
        calls = 0
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            for _ in range(100):
                await authkeep.verify_key(key)
            calls += 100
        elapsed = time.perf_counter() - started
        await authkeep.usage.flush()
        assert authkeep.usage.reported == calls, "cache hits were not all reported"
    return calls / elapsed


def summary(results: dict[str, dict[str, Merged]], client_rate: float) -> dict[str, Any]:
    ratio = {name: r["verify"].total.rps / r["hello"].total.rps for name, r in results.items()}
    cpu_ratio = {
        name: r["hello"].cpu_ms_per_request / r["verify"].cpu_ms_per_request
        for name, r in results.items()
    }
    metering_cost = 1 - ratio["cached"] / ratio["unmetered"]
    cpu_metering_cost = (
        results["cached"]["verify"].cpu_ms_per_request
        / results["unmetered"]["verify"].cpu_ms_per_request
        - 1
    )
    return {
        "servers": {
            name: {
                route: {
                    "rps": round(m.total.rps, 1),
                    "p50_ms": round(m.total.p50, 3),
                    "p99_ms": round(m.total.p99, 3),
                    "server_cpu_ms_per_request": round(m.cpu_ms_per_request, 4),
                    "requests": m.total.requests,
                    "errors": m.total.errors,
                }
                for route, m in r.items()
            }
            for name, r in results.items()
        },
        "ratios": {
            "cache_hit_vs_hello": round(ratio["cached"], 3),
            "cache_miss_vs_hello": round(ratio["uncached"], 3),
            "unmetered_hit_vs_hello": round(ratio["unmetered"], 3),
            "metering_cost": round(metering_cost, 3),
        },
        "cpu_ratios": {
            "cache_hit_vs_hello": round(cpu_ratio["cached"], 3),
            "cache_miss_vs_hello": round(cpu_ratio["uncached"], 3),
            "unmetered_hit_vs_hello": round(cpu_ratio["unmetered"], 3),
            "metering_cost": round(cpu_metering_cost, 3),
        },
        "targets": {
            "cache_hit_vs_hello": TARGET_CACHE_HIT,
            "metering_cost": TARGET_METERING_COST,
            "cache_hit_met": ratio["cached"] >= TARGET_CACHE_HIT,
            "metering_met": metering_cost <= TARGET_METERING_COST,
        },
        "client_cache_hits_per_second": round(client_rate, 1),
    }


def print_table(results: dict[str, dict[str, Merged]], report: dict[str, Any]) -> None:
    labels = {
        "cached": "verify, server cache hit",
        "uncached": "verify, cache miss (DB)",
        "unmetered": "verify, hit, metering off",
    }
    for name, r in results.items():
        print(f"[{name}: {' '.join(f'{k}={v}' for k, v in SERVERS[name].items()) or 'defaults'}]")
        for route, label in (("hello", "GET /health (hello world)"), ("verify", labels[name])):
            print(r[route].total.line(f"  {label}"))
    ratios, cpu, targets = report["ratios"], report["cpu_ratios"], report["targets"]
    print(f"{'':30}{'req/s':>8}{'server CPU':>12}")
    for label, name in (
        ("cache hit / hello-world", "cache_hit_vs_hello"),
        ("cache miss / hello-world", "cache_miss_vs_hello"),
        ("hit, metering off / hello", "unmetered_hit_vs_hello"),
    ):
        print(f"{label:<30}{ratios[name]:8.2f}{cpu[name]:12.2f}")
    print(
        f"{'metering cost':<30}{100 * ratios['metering_cost']:7.1f}%"
        f"{100 * cpu['metering_cost']:11.1f}%"
    )
    print(
        f"targets (req/s): cache hit >= {TARGET_CACHE_HIT}: "
        f"{'met' if targets['cache_hit_met'] else 'MISSED'}; metering <= "
        f"{100 * TARGET_METERING_COST:.0f} %: {'met' if targets['metering_met'] else 'MISSED'}"
    )
    print(f"client cache hit, in process  = {report['client_cache_hits_per_second']:.0f} calls/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over all servers")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--json", help="also write the JSON report to this file")
    args = parser.parse_args()
    base_env = {}
    if os.environ.get("BENCH_DATABASE_URL"):
        base_env["DATABASE_URL"] = os.environ["BENCH_DATABASE_URL"]
    with ExitStack() as stack:
        servers = {
            name: stack.enter_context(started_server({**base_env, **env}))
            for name, env in SERVERS.items()
        }
        results = asyncio.run(measure(servers, args.rounds, args.seconds, args.concurrency))
        client_rate = asyncio.run(client_cache_hits(servers["cached"].url, args.seconds))
    report = summary(results, client_rate)
    print_table(results, report)
    print(json.dumps(report, indent=2))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(report, out, indent=2)


if __name__ == "__main__":
    main()
