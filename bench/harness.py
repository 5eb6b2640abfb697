"""Shared bench plumbing: a real `authkeep serve` on loopback and a bounded HTTP load loop.

Every figure a bench prints is a ratio measured in one run on one server, so it compares like
with like on whatever machine runs it.
"""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx


@dataclass
class LoadResult:
    requests: int
    seconds: float
    latencies_ms: list[float]
    errors: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies_ms)

    @property
    def p99(self) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]

    def line(self, name: str) -> str:
        return (
            f"{name:<28} {self.rps:9.1f} req/s   p50 {self.p50:7.2f} ms   "
            f"p99 {self.p99:7.2f} ms   errors {self.errors}"
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@contextmanager
def running_server(env: dict[str, str] | None = None) -> Iterator[str]:
    """Start `authkeep serve` in a scratch directory; yield its base URL; stop it."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="authkeep-bench-") as workdir:
        full_env = {**os.environ, "AUTHKEEP_LOG_LEVEL": "WARNING", **(env or {})}
        log = Path(workdir) / "server.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "authkeep", "serve", "--port", str(port)],
                cwd=workdir,
                env=full_env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_ready(url, process, log)
            yield url
        finally:
            process.terminate()
            process.wait(30)


def _wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("server did not start in 30 s")


async def load(
    request: Callable[[httpx.AsyncClient], Awaitable[httpx.Response]],
    *,
    base_url: str,
    concurrency: int,
    seconds: float,
    expect: int = 200,
) -> LoadResult:
    """Run `request` from `concurrency` workers for `seconds`; count and time every call."""
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as client:
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                response = await request(client)
                latencies.append((time.perf_counter() - started) * 1000)
                if response.status_code != expect:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return LoadResult(len(latencies), elapsed, latencies, errors)
