"""The secrets of multi-factor authentication: TOTP seeds, encrypted at rest, and the codes that
prove them, plus recovery codes.

Seeds (CHK-CR-01, CHK-CR-03): 160 random bits from `secrets` (RFC 4226 §4), base32. At rest
they are AES-256-GCM ciphertexts under a key derived from `AUTHKEEP_SECRET_KEY` with
HKDF-SHA256 and a fixed label, so a copy of the database alone does not reveal them. The
user's id is the associated data: a ciphertext moved to another user's row does not decrypt.

Codes: RFC 6238 with the parameters every authenticator app understands (6 digits, 30 s,
HMAC-SHA1; HMAC-SHA1 is not a collision use of SHA-1). A code is checked against the previous,
current and next step, in constant time.

Recovery codes: 10 characters from Crockford's base32 alphabet (50 bits) from `secrets`, shown
as `xxxxx-xxxxx`. Stored as HMAC-SHA-256 under `AUTHKEEP_SECRET_KEY` of the user's id and the
code. 50 bits are few enough to try them all against an unkeyed digest, so a copy of the
database alone must not be enough to check a guess; the user's id keeps equal codes of two
users apart. Codes stored before the key was used are plain SHA-256 of the same text
(`legacy_recovery_digest`): still accepted, never written again.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
import secrets
import time
import uuid
from urllib.parse import quote, urlencode

import pyotp
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from authkeep.config import Settings
from authkeep.core.secrets import secret_for
from authkeep.core.security import keyed_digest, token_digest
from authkeep.errors import AuthkeepError, ConfigError

ISSUER = "authkeep"
DIGITS = 6
PERIOD_SECONDS = 30
# Steps either side of now that are accepted: ±30 s of clock drift (RFC 6238 §5.2).
DRIFT_STEPS = 1
SEED_BYTES = 20
NONCE_BYTES = 12
KEY_INFO = b"authkeep/mfa/totp-seed/aes-256-gcm/v1"
AAD_PREFIX = b"authkeep-totp-seed:"
RECOVERY_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case
RECOVERY_LENGTH = 10
RECOVERY_COUNT = 10
RECOVERY_DIGEST_LABEL = "authkeep.mfa.recovery-code.v1:"
# Letters people misread for digits, as Crockford's decoding rules map them.
_RECOVERY_LOOKALIKES = str.maketrans({"o": "0", "i": "1", "l": "1"})
_RECOVERY_SEPARATORS = re.compile(r"[\s-]+")
_TOTP_CODE = re.compile(r"[0-9]{6}")


class SeedUnreadable(AuthkeepError):
    """The stored seed does not decrypt: `AUTHKEEP_SECRET_KEY` changed, or the row was altered."""

    code = "mfa_seed_unreadable"
    status_code = 500
    detail = (
        "Your authenticator code cannot be checked right now. Use a recovery code, or ask an "
        "administrator."
    )


def seed_key(settings: Settings) -> bytes:
    """The AES-256 key for seeds, derived from the server's secret key."""
    if settings.secret_key is None:
        raise ConfigError("AUTHKEEP_SECRET_KEY is not set; MFA seeds cannot be protected.")
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=KEY_INFO)
    return hkdf.derive(settings.secret_key.get_secret_value().encode())


def new_seed() -> str:
    """A new TOTP seed: 160 bits from the OS CSPRNG, base32 without padding (32 characters)."""
    return base64.b32encode(secrets.token_bytes(SEED_BYTES)).decode("ascii").rstrip("=")


def encrypt_seed(key: bytes, seed: str, user_id: uuid.UUID) -> str:
    """base64(nonce ‖ AES-GCM ciphertext ‖ tag), bound to `user_id`."""
    nonce = secrets.token_bytes(NONCE_BYTES)
    sealed = AESGCM(key).encrypt(nonce, seed.encode("ascii"), AAD_PREFIX + user_id.bytes)
    return base64.b64encode(nonce + sealed).decode("ascii")


def decrypt_seed(key: bytes, stored: str, user_id: uuid.UUID) -> str:
    """The seed, or `SeedUnreadable` when the key, the row or the user does not match."""
    try:
        raw = base64.b64decode(stored, validate=True)
        plain = AESGCM(key).decrypt(
            raw[:NONCE_BYTES], raw[NONCE_BYTES:], AAD_PREFIX + user_id.bytes
        )
    except (InvalidTag, ValueError, binascii.Error) as exc:
        raise SeedUnreadable() from exc
    return plain.decode("ascii")


def otpauth_uri(seed: str, email: str) -> str:
    """The Key URI Format link an authenticator app reads from a QR code. Every parameter is
    spelled out, so apps that do not assume the defaults read it the same."""
    label = quote(f"{ISSUER}:{email}", safe=":@")
    query = urlencode(
        {
            "secret": seed,
            "issuer": ISSUER,
            "digits": DIGITS,
            "period": PERIOD_SECONDS,
            "algorithm": "SHA1",
        },
        quote_via=quote,
    )
    return f"otpauth://totp/{label}?{query}"


def totp_code(code: str) -> str | None:
    """The six digits of a TOTP code as typed (spaces allowed, `123 456`), or None."""
    compact = _RECOVERY_SEPARATORS.sub("", code)
    return compact if _TOTP_CODE.fullmatch(compact) else None


def current_step(at: float | None = None) -> int:
    """The 30-second step number of `at` (now by default)."""
    return int((time.time() if at is None else at) // PERIOD_SECONDS)


def matching_step(seed: str, code: str, at: float | None = None) -> int | None:
    """The step (now ±1) whose code equals `code`, or None. Every candidate is computed and
    compared in constant time; if two steps match, the later one is taken."""
    digits = totp_code(code)
    if digits is None:
        return None
    generator = pyotp.TOTP(seed, digits=DIGITS, interval=PERIOD_SECONDS)
    now = current_step(at)
    found: int | None = None
    for step in range(now - DRIFT_STEPS, now + DRIFT_STEPS + 1):
        if hmac.compare_digest(generator.generate_otp(step), digits):
            found = step
    return found


def new_recovery_codes(count: int = RECOVERY_COUNT) -> list[str]:
    """`count` fresh recovery codes in their display form `xxxxx-xxxxx`."""
    codes = []
    for _ in range(count):
        raw = "".join(secrets.choice(RECOVERY_ALPHABET) for _ in range(RECOVERY_LENGTH))
        codes.append(f"{raw[:5]}-{raw[5:]}")
    return codes


def normalize_recovery_code(code: str) -> str | None:
    """The 10 characters of a recovery code as typed: case, spaces and dashes do not matter,
    and `o`, `i`, `l` read as `0`, `1`, `1`. None when it cannot be a recovery code."""
    compact = _RECOVERY_SEPARATORS.sub("", code).lower().translate(_RECOVERY_LOOKALIKES)
    if len(compact) != RECOVERY_LENGTH or any(ch not in RECOVERY_ALPHABET for ch in compact):
        return None
    return compact


def recovery_key(settings: Settings) -> str:
    """The server secret that recovery code digests are keyed with."""
    return secret_for(settings, "secret_key").get_secret_value()


def recovery_digest(key: str, user_id: uuid.UUID, code: str) -> str:
    """The stored form of a normalised recovery code: HMAC-SHA-256 under the server secret
    over the user's id and the code (64 hex characters, the width of the column)."""
    return keyed_digest(key, f"{RECOVERY_DIGEST_LABEL}{user_id.hex}:{code}")


def legacy_recovery_digest(user_id: uuid.UUID, code: str) -> str:
    """The unkeyed form codes issued before keyed digests were stored in: SHA-256 over the
    user's id and the code. Only looked up, so those codes keep working until used or
    replaced."""
    return token_digest(f"{user_id.hex}:{code}")
