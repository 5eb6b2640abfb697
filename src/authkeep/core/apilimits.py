"""Rate limits on authkeep's own API (SPEC §7; BI-06, BI-08): per API key, per owner, per
anonymous client IP, in sliding windows of `AUTHKEEP_API_LIMIT_WINDOW_SECONDS`.

Every `/api/*` request is limited except the health checks, `/api/version`, `/.well-known/*`
and `POST /api/keys/verify` (each key's own limits govern verify). Who pays:

- a request with no credential at all (no `Authorization`, no `X-API-Key`, no session cookie)
  is charged to its client IP's bucket (`core.clientip`: trusted proxies only, IPv6 by /64)
  before the app sees it;
- a request whose credential authenticates is charged to its identity when the credential
  authenticates: `charge_session` (the owner bucket of the signed-in user) and
  `charge_api_key` (the key's bucket and its owner's);
- a request whose credential never authenticated (it failed, or the route does not read one)
  is charged to its client IP's bucket when its answer starts, and a 401 then becomes a 429
  once that bucket is used up, so made-up credentials buy no extra budget.

The buckets are per identity, never per path, so every spelling of a path (`//api/x`,
`/api/./x`, a trailing slash) counts against the same budget; paths are normalised only to
decide whether a request is limited at all. Every limited answer carries `RateLimit-Limit`,
`RateLimit-Remaining` and `RateLimit-Reset` (seconds until the oldest counted request leaves the
window); a refusal is 429 `rate_limited` with `Retry-After`. When the limiter's store (Redis)
does not answer, limited routes answer 503 `rate_limiter_unavailable`: limits fail closed.
Each refused request counts once in `authkeep_rate_limited_total` (`core.metrics`), under the
bucket that refused it: `api_ip`, `api_owner` or `api_key`.
"""

from __future__ import annotations

import posixpath
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from authkeep.config import Settings
from authkeep.core.clientip import limiter_key
from authkeep.core.metrics import metrics_for
from authkeep.core.ratelimit import Decision, MemoryRateLimiter, RateLimiter
from authkeep.core.request_context import request_ip
from authkeep.errors import AuthkeepError, LimiterUnavailable, RateLimited, error_response

STATE_KEY = "api_limit"
EXEMPT_PREFIXES = ("/api/health/", "/.well-known/")
EXEMPT_PATHS = {"/api/health", "/api/version"}
EXEMPT_ROUTES = {("POST", "/api/keys/verify")}
_SLASHES = re.compile(r"/{2,}")


class ApiRateLimited(RateLimited):
    """Refused by one of these limits; `limiter` is its name in the metrics (`api_ip`,
    `api_owner` or `api_key`)."""

    detail = "Too many requests. Wait before trying again."

    def __init__(self, retry_after: int, limiter: str) -> None:
        super().__init__(retry_after)
        self.limiter = limiter


def normalised_path(path: str) -> str:
    """The path with repeated slashes, `.` and `..` segments and a trailing slash removed."""
    cleaned = posixpath.normpath(_SLASHES.sub("/", path or "/"))
    return cleaned if cleaned.startswith("/") else f"/{cleaned}"


def is_limited(method: str, path: str) -> bool:
    """Whether a request counts against the own-API limits. The `/api` test ignores case (a
    differently cased path is still charged, then answered 404); exemptions match exactly."""
    if (method, path) in EXEMPT_ROUTES or path in EXEMPT_PATHS:
        return False  # the verify hot path skips the normalisation below
    canonical = normalised_path(path)
    if not (canonical.lower() == "/api" or canonical.lower().startswith("/api/")):
        return False
    if canonical in EXEMPT_PATHS or canonical.startswith(EXEMPT_PREFIXES):
        return False
    return (method.upper(), canonical) not in EXEMPT_ROUTES


@dataclass
class Charge:
    """What a limited request has been charged so far: the decision its headers report."""

    credentialed: bool
    decision: Decision | None = None
    limit: int = 0
    identity: bool = False

    def record(self, decision: Decision, limit: int) -> None:
        """Keep the binding decision: a refusal, else the one with the fewest units left."""
        current = self.decision
        if (
            current is None
            or (current.allowed and not decision.allowed)
            or (current.allowed == decision.allowed and decision.remaining < current.remaining)
        ):
            self.decision, self.limit = decision, limit


def api_limiter_for(app: Starlette) -> RateLimiter:
    """The limiter of these limits: `app.state.api_limiter`, else an in-process one created on
    first use. In process it is separate from the sign-in/MFA limiter (`limiter_for`), so a
    flood of API calls from many addresses cannot push those counters out of its bounded
    memory; with Redis both are the one shared `RedisRateLimiter`."""
    limiter: RateLimiter | None = getattr(app.state, "api_limiter", None)
    if limiter is None:
        limiter = MemoryRateLimiter()
        app.state.api_limiter = limiter
    return limiter


def _charge_of(request: Request) -> Charge | None:
    charge: Charge | None = getattr(request.state, STATE_KEY, None)
    return charge


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def ip_bucket(request: Request) -> str:
    return f"api:ip:{limiter_key(request_ip(request))}"


async def _charge(
    request: Request, charge: Charge, buckets: Iterable[tuple[str, int, str]]
) -> None:
    """Charge one unit to each (bucket, limit, metric name) in turn; on a refusal take back
    what was charged and raise 429 (the refused request costs nothing). The caller counts the
    refusal in the metrics once it is the answer."""
    limiter = api_limiter_for(request.app)
    window = _settings(request).api_limit_window_seconds
    charged: list[str] = []
    for bucket, limit, name in buckets:
        decision = await limiter.hit(bucket, limit, window)
        charge.record(decision, limit)
        if not decision.allowed:
            for taken in charged:
                await limiter.refund(taken)
            raise ApiRateLimited(decision.retry_after, name)
        charged.append(bucket)


async def _charge_identity(
    request: Request, charge: Charge, buckets: Iterable[tuple[str, int, str]]
) -> None:
    """`_charge` for an authenticated identity: a refusal always becomes the answer (429)."""
    try:
        await _charge(request, charge, buckets)
    except ApiRateLimited as refused:
        metrics_for(request.app).refused(refused.limiter)
        raise


async def charge_session(request: Request, user_id: uuid.UUID) -> None:
    """Charge a session-authenticated request to its user's owner bucket (no-op off `/api`)."""
    charge = _charge_of(request)
    if charge is None or charge.identity:
        return
    charge.identity = True
    settings = _settings(request)
    owner = (f"api:owner:{user_id}", settings.api_limit_per_owner, "api_owner")
    await _charge_identity(request, charge, [owner])


async def charge_api_key(request: Request, key_id: uuid.UUID, user_id: uuid.UUID) -> None:
    """Charge an API-key-authenticated request to the key's bucket and to the bucket of the
    account that owns the key (the same one its sessions use; never the free-text external
    id, which another account could choose too). Call it once the key is valid."""
    charge = _charge_of(request)
    if charge is None or charge.identity:
        return
    charge.identity = True
    settings = _settings(request)
    await _charge_identity(
        request,
        charge,
        [
            (f"api:key:{key_id}", settings.api_limit_per_key, "api_key"),
            (f"api:owner:{user_id}", settings.api_limit_per_owner, "api_owner"),
        ],
    )


def has_credential(request: Request, cookie_names: Iterable[str]) -> bool:
    headers = request.headers
    if headers.get("authorization", "").strip() or headers.get("x-api-key", "").strip():
        return True
    return any(request.cookies.get(name) for name in cookie_names)


def limit_headers(charge: Charge) -> list[tuple[bytes, bytes]]:
    decision = charge.decision
    if decision is None:
        return []
    values = (
        ("ratelimit-limit", charge.limit),
        ("ratelimit-remaining", decision.remaining),
        ("ratelimit-reset", decision.reset),
    )
    return [(name.encode(), str(value).encode()) for name, value in values]


class ApiLimitMiddleware:
    """Charges anonymous requests up front and unauthenticated credentials afterwards, and puts
    the `RateLimit-*` headers on every limited answer (see module doc). Pure ASGI, so the
    answer's body streams through untouched."""

    def __init__(self, app: ASGIApp, credential_cookies: Iterable[str] = ()) -> None:
        self.app = app
        self.credential_cookies = tuple(credential_cookies)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_limited(scope["method"], scope["path"]):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        charge = Charge(credentialed=has_credential(request, self.credential_cookies))
        scope.setdefault("state", {})[STATE_KEY] = charge
        if not charge.credentialed:
            refusal = await self._charge_ip(request, charge)
            if refusal is not None:
                await self._answer(refusal, charge, scope, receive, send)
                return
        replaced = False

        async def send_with_limits(message: Message) -> None:
            nonlocal replaced
            if replaced:
                return
            if message["type"] == "http.response.start":
                if charge.credentialed and not charge.identity:
                    refusal = await self._charge_ip(request, charge)
                    if refusal is not None and message["status"] == 401:
                        replaced = True
                        await self._answer(refusal, charge, scope, receive, send)
                        return
                message.setdefault("headers", []).extend(limit_headers(charge))
            await send(message)

        await self.app(scope, receive, send_with_limits)

    async def _charge_ip(self, request: Request, charge: Charge) -> AuthkeepError | None:
        """Charge the client IP's bucket; the error to answer with when refused or when the
        limiter is down, else None."""
        try:
            bucket = (ip_bucket(request), _settings(request).api_limit_per_ip, "api_ip")
            await _charge(request, charge, [bucket])
        except (ApiRateLimited, LimiterUnavailable) as refusal:
            return refusal
        return None

    @staticmethod
    async def _answer(
        error: AuthkeepError, charge: Charge, scope: Scope, receive: Receive, send: Send
    ) -> None:
        if isinstance(error, ApiRateLimited):
            metrics_for(scope["app"]).refused(error.limiter)
        response = error_response(error, scope.get("state", {}).get("request_id"))
        for name, value in limit_headers(charge):
            response.headers[name.decode()] = value.decode()
        await response(scope, receive, send)
