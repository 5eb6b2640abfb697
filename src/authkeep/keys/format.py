"""The API key format: `<prefix>_<secret><checksum>`, all in one header-safe token.

- `prefix`: 1-16 lowercase letters and digits, starting with a letter (`ak` by default), so
  secret scanners and humans can tell what the key is for.
- `secret`: 43 base62 characters holding 256 random bits from the OS CSPRNG.
- `checksum`: 6 base62 characters of the CRC-32 of `<prefix>_<secret>`, so a mistyped or
  truncated key is refused by `parse_key` without a database lookup.

Only `key_digest(server_secret, key)` — HMAC-SHA-256 — is stored (CHK-AK-01); `display_start`
is the short visible start kept for lists.
"""

from __future__ import annotations

import re
import secrets
import zlib
from dataclasses import dataclass

from authkeep.core.security import keyed_digest

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
SECRET_BYTES = 32
SECRET_LENGTH = 43  # ceil(256 / log2(62))
CHECKSUM_LENGTH = 6  # 62**6 > 2**32
PREFIX_PATTERN = r"[a-z][a-z0-9]{0,15}"
MAX_KEY_LENGTH = 16 + 1 + SECRET_LENGTH + CHECKSUM_LENGTH
START_LENGTH = 6
_KEY = re.compile(
    rf"(?P<prefix>{PREFIX_PATTERN})_(?P<secret>[0-9A-Za-z]{{{SECRET_LENGTH}}})"
    rf"(?P<checksum>[0-9A-Za-z]{{{CHECKSUM_LENGTH}}})"
)
_DIGEST_LABEL = "authkeep.api-key.v1:"


@dataclass(frozen=True)
class ParsedKey:
    prefix: str
    key: str


def _base62(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, rest = divmod(number, 62)
        digits.append(ALPHABET[rest])
    if number:
        raise ValueError("number does not fit in the width")
    return "".join(reversed(digits))


def _checksum(head: str) -> str:
    return _base62(zlib.crc32(head.encode("ascii")), CHECKSUM_LENGTH)


def valid_prefix(prefix: str) -> bool:
    return re.fullmatch(PREFIX_PATTERN, prefix) is not None


def new_key(prefix: str) -> str:
    """A fresh key with this prefix. Raises ValueError for a prefix outside the pattern."""
    if not valid_prefix(prefix):
        raise ValueError("prefix must be 1-16 lowercase letters or digits, starting with a letter")
    value = int.from_bytes(secrets.token_bytes(SECRET_BYTES), "big")
    head = f"{prefix}_{_base62(value, SECRET_LENGTH)}"
    return head + _checksum(head)


def parse_key(text: str) -> ParsedKey | None:
    """The key if `text` is well formed with a matching checksum, else None. Never raises."""
    if not isinstance(text, str) or len(text) > MAX_KEY_LENGTH:
        return None
    match = _KEY.fullmatch(text)
    if match is None:
        return None
    head = text[:-CHECKSUM_LENGTH]
    if not secrets.compare_digest(_checksum(head), match["checksum"]):
        return None
    return ParsedKey(prefix=match["prefix"], key=text)


def key_digest(server_secret: str, key: str) -> str:
    """The stored and looked-up form of a key: HMAC-SHA-256 hex under the server secret."""
    return keyed_digest(server_secret, _DIGEST_LABEL + key)


def display_start(key: str) -> str:
    """`<prefix>_` plus the first few secret characters, safe to show in lists."""
    prefix, _, rest = key.partition("_")
    return f"{prefix}_{rest[:START_LENGTH]}"
