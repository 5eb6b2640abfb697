"""`AuthkeepClient`: verify API keys and sessions against an authkeep server, with a short local
cache whose hits are still counted once at the server (see `cache` and `usage`).

The client fails closed: when authkeep cannot give an answer it raises `AuthkeepUnavailable`,
never a made-up result. Keys and session tokens travel only in request headers; the client never
logs them and its errors never contain them.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from authkeep.client.cache import (
    TtlCache,
    VerifySlot,
    cacheable,
    seconds_until,
    secret_digest,
    verify_slot,
)
from authkeep.client.errors import AuthkeepRejected, AuthkeepUnavailable
from authkeep.client.schemas import SessionInfo
from authkeep.client.usage import UsageReporter
from authkeep.keys.format import parse_key
from authkeep.keys.schemas import Outcome, RateLimitRequest, VerifyRequest, VerifyResult

VERIFY_PATH = "/api/keys/verify"
USAGE_REPORT_PATH = "/api/usage/report"
SESSION_PATH = "/api/auth/session"
MAX_TOKEN_LENGTH = 4096
M = TypeVar("M", bound=BaseModel)


class AuthkeepClient:
    """An async client for one authkeep server. Use it as `async with AuthkeepClient(url) as c:`,
    or pass `lifespan=client.lifespan` to FastAPI so it is closed (and its buffered usage
    reported) when the app stops.

    `cache_ttl` seconds bound how late a revocation is seen (0 turns the cache off);
    `http_client` lets the caller supply (and own) the `httpx.AsyncClient`.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 5.0,
        cache_ttl: float = 5.0,
        http_client: httpx.AsyncClient | None = None,
        usage_flush_seconds: float = 1.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        # For error messages: never a password that the URL may carry.
        self._where = str(httpx.URL(self.base_url).copy_with(username=None, password=None))
        self.timeout = timeout
        self.cache_ttl = cache_ttl
        self._http = http_client if http_client is not None else httpx.AsyncClient()
        self._owns_http = http_client is None
        # Answers are kept as authkeep's JSON: each hit parses its own copy (cheaper than a deep
        # copy), so a caller that changes its result cannot change the next caller's.
        self.key_cache: TtlCache[VerifySlot, bytes] = TtlCache(cache_ttl)
        self.session_cache: TtlCache[str, bytes] = TtlCache(cache_ttl)
        self.usage = UsageReporter(self._report_usage, usage_flush_seconds)
        self._closed = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Report the buffered cache hits, then close the HTTP client if this client made it."""
        if self._closed:
            return
        self._closed = True
        await self.usage.aclose()
        if self._owns_http:
            await self._http.aclose()

    @asynccontextmanager
    async def lifespan(self, app: object) -> AsyncIterator[None]:
        """A FastAPI/Starlette lifespan that closes this client when the app stops."""
        try:
            yield
        finally:
            await self.aclose()

    async def verify_key(
        self,
        key: str,
        *,
        permissions: str | None = None,
        cost: int = 1,
        ratelimits: Sequence[RateLimitRequest] | None = None,
        feature: str | None = None,
    ) -> VerifyResult:
        """authkeep's answer for `key`: `result.valid` is True only for `Outcome.VALID`.

        A malformed key (bad shape or checksum) is answered NOT_FOUND here, without a request.
        Raises `AuthkeepUnavailable` when authkeep cannot answer and `AuthkeepRejected` when it
        refuses the request itself (for example a malformed `permissions` expression).
        """
        self._ensure_open()
        request = VerifyRequest(
            cost=cost,
            permissions=permissions,
            ratelimits=list(ratelimits) if ratelimits is not None else None,
            feature=feature,
        )
        if parse_key(key) is None:
            return VerifyResult(valid=False, code=Outcome.NOT_FOUND)
        slot = verify_slot(key, request)
        if slot is not None:
            cached = self.key_cache.get(slot)
            if cached is not None:
                self.usage.add(key, request.cost, slot.key_digest)
                return VerifyResult.model_validate_json(cached)
        response = await self._send(
            "POST",
            VERIFY_PATH,
            headers={"X-API-Key": key, "Content-Type": "application/json"},
            content=request.model_dump_json(),
        )
        result = _parse(VerifyResult, response)
        if slot is not None and cacheable(result):
            self.key_cache.put(slot, response.content, seconds=seconds_until(result.expires_at))
        return result

    async def session(self, token_or_cookie: str) -> SessionInfo | None:
        """Who is signed in with this session token (the bearer token or the session cookie's
        value), or None when the session is not valid. Valid answers are cached `cache_ttl`
        seconds, so a sign-out is seen at most that late."""
        self._ensure_open()
        token = token_or_cookie.strip()
        if not _plausible_token(token):
            return None
        digest = secret_digest(token)
        cached = self.session_cache.get(digest)
        if cached is not None:
            return SessionInfo.model_validate_json(cached)
        response = await self._send(
            "GET", SESSION_PATH, headers={"Authorization": f"Bearer {token}"}
        )
        if response.status_code == 401:
            return None
        info = _parse(SessionInfo, response)
        remaining = seconds_until(info.session.expires_at)
        self.session_cache.put(digest, response.content, seconds=remaining)
        return info

    async def _send(
        self, method: str, path: str, *, headers: dict[str, str], content: str | None = None
    ) -> httpx.Response:
        try:
            response = await self._http.request(
                method, self.base_url + path, headers=headers, content=content, timeout=self.timeout
            )
        except httpx.HTTPError as exc:
            raise AuthkeepUnavailable(
                f"authkeep at {self._where} did not answer ({type(exc).__name__})"
            ) from exc
        if response.status_code >= 500 or response.status_code == 429:
            raise AuthkeepUnavailable(
                f"authkeep at {self._where} answered HTTP {response.status_code}",
                retry_after=_retry_after(response),
            )
        return response

    async def _report_usage(self, key: str, count: int, units: int) -> httpx.Response:
        return await self._http.post(
            self.base_url + USAGE_REPORT_PATH,
            headers={"X-API-Key": key},
            json={"count": count, "units": units},
            timeout=self.timeout,
        )

    def _ensure_open(self) -> None:
        if self._closed:
            raise RuntimeError("this AuthkeepClient is closed")


def _parse(model: type[M], response: httpx.Response) -> M:
    if response.status_code != 200:
        error, detail = _error_body(response)
        raise AuthkeepRejected(response.status_code, error, detail)
    try:
        return model.model_validate_json(response.content)
    except ValidationError:
        raise AuthkeepUnavailable(
            f"authkeep answered {response.request.url.path} with an unexpected body"
        ) from None


def _error_body(response: httpx.Response) -> tuple[str, str]:
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        return str(body.get("error", "http_error")), str(body.get("detail", ""))
    return "http_error", response.reason_phrase


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After", "")
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _plausible_token(token: str) -> bool:
    """Only printable ASCII without spaces can travel in a header; anything else is not a
    session token, and sending it would fail as if authkeep were down."""
    return (
        0 < len(token) <= MAX_TOKEN_LENGTH
        and token.isascii()
        and token.isprintable()
        and (" " not in token)
    )
