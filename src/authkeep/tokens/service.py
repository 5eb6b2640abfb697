"""ES256 tokens: `issue` signs with the current key; `verify` accepts only what `issue` makes.

Verification reads like RFC 8725: size and shape → header (alg fixed to ES256, `kid` looked up in
the local key set, no other header parameters) → signature (raw R‖S, 64 bytes) → claims (`iss`,
`aud`, `exp`, `nbf`, `iat` required, leeway 30 s). Every failure is one `InvalidToken` (401).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt

from authkeep.errors import Unauthorized
from authkeep.tokens.keys import ALGORITHM, KeySet, b64url

ACCESS_TOKEN_TYPE = "at+jwt"  # noqa: S105 - a media type, not a secret
LEEWAY_SECONDS = 30
MAX_TOKEN_LENGTH = 8 * 1024
SIGNATURE_BYTES = 64
# Order of the P-256 group: r and s must lie in [1, n-1] (CVE-2022-21449 accepted r = s = 0).
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
REGISTERED_CLAIMS = frozenset({"iss", "sub", "aud", "exp", "nbf", "iat", "jti"})
HEADER_PARAMETERS = frozenset({"alg", "typ", "kid"})
_COMPACT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+", re.ASCII)


class InvalidToken(Unauthorized):
    """Any token that is malformed, forged, expired or meant for something else."""

    code = "invalid_token"
    detail = "The token is not valid: it is malformed, expired, or not meant for this use."
    headers = {"WWW-Authenticate": 'Bearer error="invalid_token"'}

    def __init__(self, reason: str) -> None:
        super().__init__()
        # For logs and tests only; clients always get the same detail.
        self.reason = reason


@dataclass(frozen=True)
class Claims:
    """What a verified token says."""

    subject: str
    audience: str
    issuer: str
    token_type: str
    key_id: str
    token_id: str
    issued_at: datetime
    not_before: datetime
    expires_at: datetime
    extra: Mapping[str, Any] = field(default_factory=dict)


def issue(
    keyset: KeySet,
    subject: str,
    audience: str,
    ttl: timedelta | int,
    typ: str = ACCESS_TOKEN_TYPE,
    extra_claims: Mapping[str, Any] | None = None,
) -> str:
    """Sign a token for `subject` and `audience` that lives `ttl` (a timedelta or seconds).

    `extra_claims` may not set a registered claim: those always come from the arguments.
    """
    key = keyset.require_signing()
    seconds = int(ttl.total_seconds()) if isinstance(ttl, timedelta) else int(ttl)
    if seconds <= 0:
        raise ValueError("ttl must be positive")
    clash = REGISTERED_CLAIMS.intersection(extra_claims or {})
    if clash:
        raise ValueError(f"extra_claims may not set {', '.join(sorted(clash))}")
    now = int(time.time())
    payload = {
        **(extra_claims or {}),
        "iss": keyset.issuer,
        "sub": subject,
        "aud": audience,
        "iat": now,
        "nbf": now,
        "exp": now + seconds,
        "jti": secrets.token_urlsafe(16),
    }
    return jwt.encode(
        payload, key.private_key, algorithm=ALGORITHM, headers={"kid": key.kid, "typ": typ}
    )


def verify(keyset: KeySet, token: str, audience: str, typ: str) -> Claims:
    """Check `token` fully, or raise `InvalidToken`. The algorithm is ES256, whatever the token
    says; the key is the one its `kid` names in `keyset`, nowhere else."""
    header_segment, payload_segment, signature_segment = _segments(token)
    header = _json_object(header_segment, "header")
    _check_header(header, typ)
    key = keyset.key_for(header["kid"])
    if key is None:
        raise InvalidToken("unknown_kid")
    _check_signature_encoding(signature_segment)
    try:
        jwt.decode(
            token,
            key.public_key,
            algorithms=[ALGORITHM],
            audience=audience,
            issuer=keyset.issuer,
            leeway=LEEWAY_SECONDS,
            options={"require": ["iss", "sub", "aud", "exp", "nbf", "iat"], "strict_aud": True},
        )
    except jwt.PyJWTError as exc:
        raise InvalidToken(_reason(exc)) from None
    except (ValueError, TypeError):
        raise InvalidToken("rejected") from None
    # The signature holds; now read the claims strictly (duplicates, types) ourselves.
    return _claims(_json_object(payload_segment, "payload"), header)


# Most specific first: ExpiredSignatureError is also an InvalidTokenError, and so on.
_REASONS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.ExpiredSignatureError, "expired"),
    (jwt.ImmatureSignatureError, "not_yet_valid"),
    (jwt.InvalidAudienceError, "wrong_audience"),
    (jwt.InvalidIssuerError, "wrong_issuer"),
    (jwt.InvalidSignatureError, "bad_signature"),
    (jwt.MissingRequiredClaimError, "missing_claim"),
    (jwt.exceptions.InvalidSubjectError, "claim_types"),
    (jwt.exceptions.InvalidJTIError, "claim_types"),
)


def _reason(exc: jwt.PyJWTError) -> str:
    return next((reason for kind, reason in _REASONS if isinstance(exc, kind)), "rejected")


def _segments(token: object) -> tuple[str, str, str]:
    # Size first: nothing is decoded for an oversized token.
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
        raise InvalidToken("malformed")
    if not _COMPACT.fullmatch(token):
        raise InvalidToken("malformed")
    header, payload, signature = token.split(".")
    return header, payload, signature


def _b64decode(segment: str) -> bytes:
    """Strict base64url: no padding, no whitespace, and the canonical encoding only."""
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise InvalidToken("malformed") from None
    if b64url(raw) != segment:
        raise InvalidToken("malformed")
    return raw


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, value in pairs:
        if name in result:
            raise InvalidToken("duplicate_member")
        result[name] = value
    return result


def _reject_constant(name: str) -> Any:
    raise InvalidToken("malformed")


def _json_object(segment: str, part: str) -> dict[str, Any]:
    try:
        value = json.loads(
            _b64decode(segment).decode("utf-8"),
            object_pairs_hook=_reject_duplicates,
            parse_constant=_reject_constant,
        )
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise InvalidToken("malformed") from None
    if not isinstance(value, dict):
        raise InvalidToken("malformed")
    return value


def _check_header(header: dict[str, Any], typ: str) -> None:
    # An allowlist: jku, x5u, jwk, x5c, crit, b64, cty (nested JWS) … are all refused.
    if set(header) != HEADER_PARAMETERS:
        raise InvalidToken("header_parameters")
    if header["alg"] != ALGORITHM:
        raise InvalidToken("algorithm")
    if header["typ"] != typ:
        raise InvalidToken("wrong_type")


def _check_signature_encoding(segment: str) -> None:
    signature = _b64decode(segment)
    if len(signature) != SIGNATURE_BYTES:
        raise InvalidToken("signature_encoding")
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:], "big")
    if not (0 < r < P256_ORDER and 0 < s < P256_ORDER):
        raise InvalidToken("signature_encoding")


def _timestamp(payload: dict[str, Any], name: str) -> datetime:
    value = payload[name]
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidToken("claim_types")
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        raise InvalidToken("claim_types") from None


def _claims(payload: dict[str, Any], header: dict[str, Any]) -> Claims:
    strings = ("iss", "sub", "aud")
    if any(not isinstance(payload.get(name), str) for name in strings):
        raise InvalidToken("claim_types")
    token_id = payload.get("jti", "")
    if not isinstance(token_id, str):
        raise InvalidToken("claim_types")
    return Claims(
        subject=payload["sub"],
        audience=payload["aud"],
        issuer=payload["iss"],
        token_type=header["typ"],
        key_id=header["kid"],
        token_id=token_id,
        issued_at=_timestamp(payload, "iat"),
        not_before=_timestamp(payload, "nbf"),
        expires_at=_timestamp(payload, "exp"),
        extra={k: v for k, v in payload.items() if k not in REGISTERED_CLAIMS},
    )
