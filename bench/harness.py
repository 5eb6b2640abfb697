"""Shared bench plumbing: a real `authkeep serve` on loopback and bounded HTTP load loops.

Every figure a bench prints is a ratio measured in one run on one server, so it compares like
with like on whatever machine runs it. Each load phase also reports where the CPU went: the
server process's CPU time (read from /proc, all its threads) and the load generator's own
(this process), per request — client and server share the machine's cores.

Two load loops: `load` drives an httpx client (cookies, redirects, any request shape);
`raw_load` sends one prebuilt HTTP/1.1 request over keep-alive sockets and reads answers by
Content-Length. httpx costs the load generator several times the server's CPU for a small
request, so on a small machine it, not the server, would set the pace: benches that compare
server throughputs use `raw_load`.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

CONTENT_LENGTH = re.compile(rb"(?i)\r\ncontent-length: *(\d+)")

# Own-API limits high enough that a bench measures throughput, not the limiter's refusals.
UNLIMITED_API = {
    "AUTHKEEP_API_LIMIT_PER_KEY": "1000000000",
    "AUTHKEEP_API_LIMIT_PER_OWNER": "1000000000",
    "AUTHKEEP_API_LIMIT_PER_IP": "1000000000",
}


@dataclass
class LoadResult:
    requests: int
    seconds: float
    latencies_ms: list[float]
    errors: int
    client_cpu_seconds: float = 0.0
    server_cpu_seconds: float | None = None

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

    @property
    def client_cpu_ms(self) -> float:
        """The load generator's CPU per request (ms)."""
        return 1000 * self.client_cpu_seconds / max(self.requests, 1)

    @property
    def server_cpu_ms(self) -> float | None:
        """The server process's CPU per request (ms, every thread), when it was measured."""
        if self.server_cpu_seconds is None:
            return None
        return 1000 * self.server_cpu_seconds / max(self.requests, 1)

    def line(self, name: str) -> str:
        server = "" if self.server_cpu_ms is None else f"server {self.server_cpu_ms:6.2f}  "
        return (
            f"{name:<28} {self.rps:9.1f} req/s   p50 {self.p50:7.2f} ms   "
            f"p99 {self.p99:7.2f} ms   errors {self.errors}   "
            f"cpu/req: {server}client {self.client_cpu_ms:5.2f} ms"
        )


@dataclass
class Server:
    """A running `authkeep serve`: its base URL and its process."""

    url: str
    process: subprocess.Popen[bytes]

    def cpu_seconds(self) -> float:
        """CPU time (user + system) of the server process so far, every thread included."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rpartition(")")[2].split()
        # After the command name: utime and stime are the 12th and 13th fields (clock ticks).
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu_seconds() -> float:
    """CPU time every core has spent busy since boot (/proc/stat), all processes included."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@contextmanager
def started_server(env: dict[str, str] | None = None) -> Iterator[Server]:
    """Start `authkeep serve` in a scratch directory; yield it; stop it."""
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
            yield Server(url, process)
        finally:
            process.terminate()
            process.wait(30)


@contextmanager
def running_server(env: dict[str, str] | None = None) -> Iterator[str]:
    """Start `authkeep serve` in a scratch directory; yield its base URL; stop it."""
    with started_server(env) as server:
        yield server.url


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
    server: Server | None = None,
) -> LoadResult:
    """Run `request` from `concurrency` workers for `seconds`; count and time every call.
    With `server`, its CPU time over the same window is measured too."""
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

        server_cpu = server.cpu_seconds() if server else 0.0
        client_cpu = time.process_time()
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        client_cpu = time.process_time() - client_cpu
        server_cpu = server.cpu_seconds() - server_cpu if server else 0.0
    return LoadResult(
        len(latencies),
        elapsed,
        latencies,
        errors,
        client_cpu_seconds=client_cpu,
        server_cpu_seconds=server_cpu if server else None,
    )


def raw_request(method: str, path: str, headers: dict[str, str], body: str = "") -> bytes:
    """One HTTP/1.1 keep-alive request, built once and sent as is by `raw_load`."""
    payload = body.encode()
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(payload)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


async def raw_load(
    request: bytes | Sequence[bytes],
    server: Server,
    *,
    concurrency: int,
    seconds: float,
    expect: int = 200,
) -> LoadResult:
    """Send `request` from `concurrency` keep-alive connections for `seconds`; count and time
    every answer, and measure the server's and this process's CPU over the same window. With a
    sequence of requests, connection i sends request i (modulo its length)."""
    host, port = server.url.removeprefix("http://").split(":")
    requests = [request] if isinstance(request, bytes) else list(request)
    latencies: list[float] = []
    errors = 0

    async def worker(deadline: float, request: bytes) -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = CONTENT_LENGTH.search(head)
                if length is None:
                    raise RuntimeError(f"an answer without Content-Length: {head!r}")
                await reader.readexactly(int(length[1]))
                latencies.append((time.perf_counter() - started) * 1000)
                errors += int(head[9:12]) != expect
        finally:
            writer.close()

    server_cpu, client_cpu = server.cpu_seconds(), time.process_time()
    started = time.perf_counter()
    await asyncio.gather(
        *(worker(started + seconds, requests[i % len(requests)]) for i in range(concurrency))
    )
    elapsed = time.perf_counter() - started
    return LoadResult(
        len(latencies),
        elapsed,
        latencies,
        errors,
        client_cpu_seconds=time.process_time() - client_cpu,
        server_cpu_seconds=server.cpu_seconds() - server_cpu,
    )
