"""A real `authkeep serve` process on loopback, for tests that need the whole server."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from support.secrets_scan import SCAN


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class ServerProcess:
    """`python -m authkeep serve` with the given environment; output kept in a log file."""

    def __init__(self, workdir: Path, env: dict[str, str], *args: str) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.log_path = workdir / f"server-{self.port}.log"
        self.env = {
            **{
                k: v
                for k, v in os.environ.items()
                if not k.startswith(("AUTHKEEP_", "DATABASE_URL", "AUTH_DATABASE_URI", "FLY_"))
            },
            **env,
        }
        self.args = args
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, wait: bool = True, timeout: float = 30) -> ServerProcess:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "authkeep", "serve", "--port", str(self.port), *self.args],
                cwd=self.workdir,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"server not ready in {timeout}s:\n{self.output()}")

    def output(self) -> str:
        return SCAN.record(f"server:{self.port}", self.log_path.read_text(errors="replace"))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout)
        self.output()
        return code

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.output()
