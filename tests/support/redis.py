"""A real Redis for the tests: `AUTHKEEP_TEST_REDIS_URL` when set, else a throwaway
`redis-server` this suite starts on a free loopback port (no persistence, private directory)
and stops at the end of the session.

Each test gets a Redis database number of its own, flushed before the test, so tests never see
each other's counters. A server named by `AUTHKEEP_TEST_REDIS_URL` must therefore be one kept for
tests: the suite flushes the databases it hands out (1 to 15).
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import redis

from support.server import free_port

DATABASES = range(1, 16)  # Redis has 16 databases by default; 0 is left alone.
START_TIMEOUT_SECONDS = 10.0


class ThrowawayRedis:
    """`redis-server` on 127.0.0.1:<free port>, nothing saved, files under `base_dir`."""

    def __init__(self, base_dir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server is not on PATH: install it (apt-get install redis-server) or set "
                "AUTHKEEP_TEST_REDIS_URL to a Redis kept for tests. The Redis tests never skip."
            )
        self.binary = binary
        self.base_dir = base_dir
        self.port = free_port()
        self.log_path = base_dir / "redis.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.base_dir),
            "--logfile", str(self.log_path),
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited at start; see {self.log_path}")
            try:
                with redis.Redis(port=self.port, socket_connect_timeout=0.5) as client:
                    client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"redis-server did not answer; see {self.log_path}"
                    ) from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


def with_db(url: str, number: int) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{number}"))


class RedisDatabases:
    """Hands out database numbers on one server in turn, each flushed before use."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self._numbers = itertools.cycle(DATABASES)

    def fresh(self) -> str:
        url = with_db(self.base_url, next(self._numbers))
        with redis.Redis.from_url(url, socket_connect_timeout=2) as client:
            client.flushdb()
        return url
