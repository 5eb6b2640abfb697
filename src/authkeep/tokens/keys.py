"""Signing keys: P-256 keys from settings, their RFC 7638 thumbprints (`kid`) and the JWKS.

`AUTHKEEP_JWT_KEY` is the key authkeep signs with; `AUTHKEEP_JWT_NEXT_KEY` is published and
accepted but never used to sign, which is what a rotation needs: publish the next key first,
swap later, and keep the old key (as "next") until the last token it signed has expired.
See docs/signing-keys.md.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from authkeep.config import Settings
from authkeep.core.secrets import ON_DEMAND_SECRETS, missing_secret, new_signing_key_pem, secret_for
from authkeep.errors import ConfigError

ALGORITHM = "ES256"
CURVE_NAME = "P-256"
COORDINATE_BYTES = 32
DEFAULT_ISSUER = "authkeep"

__all__ = [
    "ALGORITHM",
    "KeySet",
    "SigningKey",
    "load_signing_key",
    "new_signing_key_pem",
    "thumbprint",
]


def b64url(data: bytes) -> str:
    """Base64url without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _coordinates(public_key: ec.EllipticCurvePublicKey) -> tuple[str, str]:
    numbers = public_key.public_numbers()
    return (
        b64url(numbers.x.to_bytes(COORDINATE_BYTES, "big")),
        b64url(numbers.y.to_bytes(COORDINATE_BYTES, "big")),
    )


def thumbprint(public_key: ec.EllipticCurvePublicKey) -> str:
    """The RFC 7638 JWK thumbprint (SHA-256, base64url): required members only, sorted, compact."""
    x, y = _coordinates(public_key)
    canonical = json.dumps(
        {"crv": CURVE_NAME, "kty": "EC", "x": x, "y": y}, separators=(",", ":"), sort_keys=True
    )
    return b64url(hashlib.sha256(canonical.encode("ascii")).digest())


@dataclass(frozen=True)
class SigningKey:
    """One P-256 key pair and its `kid`."""

    private_key: ec.EllipticCurvePrivateKey = field(repr=False)
    kid: str

    @classmethod
    def of(cls, private_key: ec.EllipticCurvePrivateKey) -> SigningKey:
        return cls(private_key=private_key, kid=thumbprint(private_key.public_key()))

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self.private_key.public_key()

    def public_jwk(self) -> dict[str, str]:
        """The public half as a JWK: never carries the private scalar `d`."""
        x, y = _coordinates(self.public_key)
        return {
            "kty": "EC",
            "crv": CURVE_NAME,
            "x": x,
            "y": y,
            "kid": self.kid,
            "use": "sig",
            "alg": ALGORITHM,
        }

    def public_pem(self) -> str:
        return self.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode("ascii")


def load_signing_key(pem: str, variable: str) -> SigningKey:
    """Parse a P-256 private key in PEM (PKCS8 or SEC1). Errors name `variable`, never the value.

    A PEM squeezed onto one line with literal `\\n` escapes (as `.env` files and systemd
    `EnvironmentFile=` hold it) is accepted too.
    """
    text = pem.strip()
    if "\n" not in text and "\\n" in text:
        text = text.replace("\\n", "\n")
    try:
        key = serialization.load_pem_private_key(text.encode("utf-8"), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ConfigError(
            f"{variable} is not an unencrypted private key in PEM form. Make one with "
            "`authkeep keygen`."
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        kind = key.curve.name if isinstance(key, ec.EllipticCurvePrivateKey) else type(key).__name__
        raise ConfigError(
            f"{variable} holds a {kind} key; authkeep signs ES256 and needs a P-256 (secp256r1) "
            "key. Make one with `authkeep keygen`."
        )
    return SigningKey.of(key)


@dataclass(frozen=True)
class KeySet:
    """The keys this node signs and verifies with: the only place verification keys come from.

    `signing` is None only in production when no `AUTHKEEP_JWT_KEY` is set; anything that signs
    calls `require_signing()` and fails naming the variable.
    """

    issuer: str
    signing: SigningKey | None
    keys: Mapping[str, SigningKey]

    @classmethod
    def of(cls, issuer: str, signing: SigningKey | None, *others: SigningKey) -> KeySet:
        ordered = [key for key in (signing, *others) if key is not None]
        return cls(issuer=issuer, signing=signing, keys={key.kid: key for key in ordered})

    @classmethod
    def from_settings(cls, settings: Settings) -> KeySet:
        """The current key (generated into the data dir in standalone), plus the next key."""
        signing = None
        if settings.jwt_key is not None or not settings.is_production:
            pem = secret_for(settings, "jwt_key").get_secret_value()
            signing = load_signing_key(pem, ON_DEMAND_SECRETS["jwt_key"])
        others = []
        if settings.jwt_next_key is not None:
            pem = settings.jwt_next_key.get_secret_value()
            others.append(load_signing_key(pem, "AUTHKEEP_JWT_NEXT_KEY"))
        return cls.of(issuer_for(settings), signing, *others)

    def require_signing(self) -> SigningKey:
        """The key to sign with; a `ConfigError` naming AUTHKEEP_JWT_KEY when there is none."""
        if self.signing is None:
            raise missing_secret(["jwt_key"])
        return self.signing

    def key_for(self, kid: object) -> SigningKey | None:
        """The key with this `kid`, looked up in memory only: a `kid` is never a path or query."""
        return self.keys.get(kid) if isinstance(kid, str) else None

    def jwks(self) -> dict[str, Any]:
        """The public JWK Set: every key this node accepts, the signing key first."""
        return {"keys": [key.public_jwk() for key in self.keys.values()]}


def issuer_for(settings: Settings) -> str:
    """`AUTHKEEP_JWT_ISSUER`, else the public URL, else "authkeep"."""
    if settings.jwt_issuer:
        return settings.jwt_issuer
    if settings.public_url:
        return settings.public_url.rstrip("/")
    return DEFAULT_ISSUER
