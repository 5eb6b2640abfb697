"""`POST /api/keys/verify`: is this key valid, allowed these permissions, within its rate
limits, credits and plan? One answer with a stable outcome code (docs/api-keys.md).

The hot path of the server, so the route is plain: the body is validated by the model directly
(FastAPI's body parameter machinery cost about a fifth of a cache-hit answer's CPU) and the
answer leaves as the JSON the verifier built, with no second validation.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from authkeep.keys.deps import MissingApiKey, api_key_from
from authkeep.keys.schemas import VerifyRequest, VerifyResult
from authkeep.keys.verify import verifier_for
from authkeep.users.routes import bounded_body

DEFAULT_REQUEST = VerifyRequest()
# The largest valid body is about 3 KiB (a 1000-character expression, ten limits, a feature).
MAX_BODY_BYTES = 16 * 1024
NO_STORE = {"Cache-Control": "no-store"}


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with its nested models written in place (for OpenAPI)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return inline(defs[ref.removeprefix("#/$defs/")])
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(item) for item in node]
        return node

    result: dict[str, Any] = inline(schema)
    return result


router = APIRouter(tags=["api keys"])


@router.post(
    "/api/keys/verify",
    response_model=VerifyResult,
    responses={
        401: {"description": "No key in X-API-Key or Authorization: Bearer (missing_api_key)."},
        413: {"description": "The body is larger than 16 KiB (payload_too_large)."},
        422: {
            "description": "A malformed request: invalid_permissions_expression, "
            "unknown_rate_limit or validation_error."
        },
    },
    openapi_extra={
        "requestBody": {
            "required": False,
            "content": {"application/json": {"schema": inline_schema(VerifyRequest)}},
        }
    },
)
async def verify_api_key(request: Request) -> Response:
    """Verify the key sent in `X-API-Key` (or `Authorization: Bearer`). Every outcome —
    VALID, NOT_FOUND, DISABLED, EXPIRED, FORBIDDEN, INSUFFICIENT_PERMISSIONS, RATE_LIMITED,
    USAGE_EXCEEDED — is a 200 with `valid` and `code`; an empty body uses the defaults."""
    raw_key = api_key_from(request)
    if raw_key is None:
        raise MissingApiKey()
    body = await bounded_body(request, MAX_BODY_BYTES)
    try:
        asked = VerifyRequest.model_validate_json(body) if body.strip() else DEFAULT_REQUEST
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in errors]) from None
    answer = await verifier_for(request.app).verify(raw_key, asked)
    return Response(answer, media_type="application/json", headers=NO_STORE)
