"""A real webhook receiver: an HTTP server on a loopback port, in a thread, that records every
request and answers 500 to the first `fail_first` of them (then 204)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int


@dataclass
class Receiver:
    fail_first: int = 0
    always_fail: bool = False
    requests: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def answer(self, path: str, headers: dict[str, str], body: bytes) -> int:
        with self.lock:
            failing = self.always_fail or len(self.requests) < self.fail_first
            status = 500 if failing else 204
            self.requests.append(Received(path, headers, body, status))
            return status

    def accepted(self) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if r.status == 204]

    def count(self) -> int:
        with self.lock:
            return len(self.requests)


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            headers = {name.lower(): value for name, value in self.headers.items()}
            status = receiver.answer(self.path, headers, body)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            """Quiet: the test reads `receiver.requests`."""

    return Handler


@contextmanager
def running_receiver(fail_first: int = 0, *, always_fail: bool = False) -> Iterator[Receiver]:
    """A receiver listening on 127.0.0.1 (a free port) for the duration of the block."""
    receiver = Receiver(fail_first=fail_first, always_fail=always_fail)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(receiver))
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/authkeep"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
