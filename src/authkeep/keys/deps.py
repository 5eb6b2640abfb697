"""Where an API key travels, and `CurrentKey`: authenticate a request by its API key.

The key is read from `X-API-Key`, else from `Authorization: Bearer …` — never from the URL or
the body (CHK-AK-02): a key in the query string is not looked at.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from authkeep.core import apilimits
from authkeep.errors import Unauthorized
from authkeep.keys.snapshot import KeySnapshot
from authkeep.keys.verify import verifier_for

API_KEY_HEADER = "x-api-key"


class MissingApiKey(Unauthorized):
    code = "missing_api_key"
    detail = "Send the API key in the X-API-Key header or as Authorization: Bearer <key>."


class InvalidApiKey(Unauthorized):
    code = "invalid_api_key"
    detail = "The API key is not valid: unknown, disabled, expired, or its owner is disabled."


def api_key_from(request: Request) -> str | None:
    """The key sent with the request, or None when neither header carries one."""
    headers = request.headers
    key = headers.get(API_KEY_HEADER, "").strip()
    if key:
        return key
    scheme, _, value = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


async def current_key(request: Request) -> KeySnapshot:
    """The request's API key if it may be used: found, enabled, not expired, owner active.
    None of the key's own rate limits, credits or usage counting here: that is what
    `POST /api/keys/verify` is for; the call is charged to authkeep's own API limits (the key's
    and its owner's buckets, `core.apilimits`). The snapshot is also left on
    `request.state.api_key`."""
    raw_key = api_key_from(request)
    if raw_key is None:
        raise MissingApiKey()
    key = await verifier_for(request.app).authenticate(raw_key)
    if key is None:
        raise InvalidApiKey()
    request.state.api_key = key
    await apilimits.charge_api_key(request, key.key_id, key.user_id)
    return key


CurrentKey = Annotated[KeySnapshot, Depends(current_key)]
