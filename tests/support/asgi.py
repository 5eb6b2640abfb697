"""One HTTP request handed to an ASGI app exactly as a server would hand it over: the raw path
untouched (httpx would clean up `//`, `/./` and encoded slashes before sending)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

from starlette.types import ASGIApp, Message


@dataclass(frozen=True)
class RawAnswer:
    status: int
    header_list: list[tuple[str, str]]

    @property
    def headers(self) -> dict[str, str]:
        """The headers by lower-case name (the last value of a repeated one)."""
        return dict(self.header_list)

    def all(self, name: str) -> list[str]:
        """Every value of header `name`, in order."""
        return [v for k, v in self.header_list if k == name.lower()]


async def raw_request(
    app: ASGIApp,
    method: str,
    raw_path: str,
    headers: dict[str, str] | None = None,
    *,
    query: str = "",
    client_ip: str = "127.0.0.1",
) -> RawAnswer:
    """Send `method raw_path?query` with a `{}` JSON body; returns the status and headers
    (names lower-case)."""
    sent = {"host": "testserver", "content-type": "application/json"}
    sent.update({name.lower(): value for name, value in (headers or {}).items()})
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": unquote(raw_path),
        "raw_path": raw_path.encode("utf-8"),
        "root_path": "",
        "query_string": query.encode("utf-8"),
        "headers": [(name.encode(), value.encode("utf-8")) for name, value in sent.items()],
        "client": (client_ip, 40000),
        "server": ("testserver", 80),
    }
    messages: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: Message) -> None:
        messages.append(message)

    await app(scope, receive, send)
    start = messages[0]
    answer = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in start["headers"]]
    return RawAnswer(start["status"], answer)
