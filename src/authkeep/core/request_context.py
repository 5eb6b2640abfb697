"""Per-request facts every domain needs: a request id and the trusted client IP."""

from __future__ import annotations

import re

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from authkeep.core.clientip import Network, client_ip
from authkeep.core.security import new_token

_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class RequestIdMiddleware:
    """Take a well-formed `X-Request-ID` from the client or make one; echo it on the response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _SAFE_REQUEST_ID.match(given) else new_token(12)
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
            await send(message)

        await self.app(scope, receive, send_with_id)


def request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def request_ip(request: Request) -> str:
    trusted: list[Network] = getattr(request.app.state, "trusted_proxies", [])
    return client_ip(request, trusted)


def user_agent(request: Request) -> str | None:
    agent = request.headers.get("user-agent")
    return agent[:400] if agent else None
