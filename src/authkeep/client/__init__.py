"""The Python client for authkeep: verify API keys and sessions from your own app.

    from authkeep.client import AuthkeepClient

    async with AuthkeepClient("https://auth.example.com") as authkeep:
        result = await authkeep.verify_key(key, permissions="documents.read")
        if result.valid: ...

FastAPI/Starlette dependencies live in `authkeep.client.fastapi`; docs/client.md has the rest.
Importing this package loads neither the server app nor its database layer.
"""

from authkeep.client.client import AuthkeepClient
from authkeep.client.errors import AuthkeepClientError, AuthkeepRejected, AuthkeepUnavailable
from authkeep.client.schemas import SessionDetails, SessionInfo, SessionUser
from authkeep.keys.schemas import (
    Entitlement,
    Outcome,
    RateLimitRequest,
    RateLimitState,
    VerifyResult,
)

__all__ = [
    "AuthkeepClient",
    "AuthkeepClientError",
    "AuthkeepRejected",
    "AuthkeepUnavailable",
    "Entitlement",
    "Outcome",
    "RateLimitRequest",
    "RateLimitState",
    "SessionDetails",
    "SessionInfo",
    "SessionUser",
    "VerifyResult",
]
