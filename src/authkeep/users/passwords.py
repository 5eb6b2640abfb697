"""Password policy (NIST 800-63B-4, RELIABILITY CHK-PW-01..04) and normalised hashing.

Policy, checked before any hashing:
- Length counts Unicode code points of the NFKC-normalised password: at least
  `password_min_length` (15), or `password_min_length_with_mfa` (8) for users with MFA, and at
  most `password_max_length` (256). No composition rules; spaces and any Unicode are allowed;
  nothing is truncated or case-changed.
- Not a common password: the shipped list (`common_passwords.txt`, zxcvbn's frequency list, MIT)
  compared case-insensitively, also with digits and symbols stripped from both ends
  (`Password1234567!` is `password`).
- Not built from context words: the product name and the email address, its local part and the
  words in it. A password that is only such words plus digits or symbols is refused.
- Not one or a few characters repeated (at most 3 distinct characters), and not a plain run
  such as `abcdefghijklmno` or `123456789012345`.

Every refusal is a 422 whose `error` code says why (`password_too_short`, `password_too_long`,
`password_common`, `password_context`, `password_repetitive`, `password_invalid`).

The same NFKC normalisation is applied when a password is set and when it is verified, so
visually identical input (full-width letters, composed or decomposed accents) always matches.
"""

from __future__ import annotations

import functools
import itertools
import re
import unicodedata
from collections.abc import Iterable
from importlib import resources

from authkeep.config import Settings
from authkeep.core.security import PasswordHashing
from authkeep.errors import ValidationFailed

PRODUCT_NAME = "authkeep"
BLOCKLIST_FILE = "common_passwords.txt"
MIN_CONTEXT_WORD = 3
MAX_DISTINCT_FOR_REPETITIVE = 3
_NOT_LETTERS = re.compile(r"[\W\d_]+")
_WORDS = re.compile(r"[^\W_]+")
_SURROGATES = re.compile("[\ud800-\udfff]")


class PasswordRejected(ValidationFailed):
    """The password breaks the policy; `code` is the machine-readable reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.code = reason


def normalize(password: str) -> str:
    """The form that is hashed and verified: Unicode NFKC (NIST 800-63B-4 §3.1.1.2)."""
    return unicodedata.normalize("NFKC", password)


def too_long(password: str, settings: Settings) -> bool:
    """Cheap cap checked before anything else (raw length bounds the normalised one)."""
    return len(password) > settings.password_max_length * 4 or (
        len(normalize(password)) > settings.password_max_length
    )


def ensure_not_too_long(password: str, settings: Settings) -> None:
    """Refuse oversize input before any hashing (CHK-PW-02, BI-07)."""
    if too_long(password, settings):
        raise PasswordRejected(
            "password_too_long",
            f"Passwords can be at most {settings.password_max_length} characters long.",
        )
    if _SURROGATES.search(password):
        raise PasswordRejected("password_invalid", "The password is not valid Unicode text.")


def min_length(settings: Settings, *, has_mfa: bool) -> int:
    return settings.password_min_length_with_mfa if has_mfa else settings.password_min_length


@functools.cache
def blocklist() -> frozenset[str]:
    """The shipped common-password list, case-folded (loaded once per process)."""
    text = resources.files("authkeep.users").joinpath(BLOCKLIST_FILE).read_text("utf-8")
    return frozenset(
        line.strip().casefold() for line in text.splitlines() if line and not line.startswith("#")
    )


def context_words(email: str | None, extra: Iterable[str] = ()) -> list[str]:
    """Words a password must not be built from: product name, email, its local part and the
    words inside that (`jane.doe@…` gives `jane.doe`, `jane`, `doe`)."""
    words = {PRODUCT_NAME}
    for value in (email, *extra):
        if not value:
            continue
        folded = normalize(value).casefold()
        local = folded.split("@", 1)[0]
        words.update({folded, local, *_WORDS.findall(local)})
    # Longest first, so `jane.doe` is removed before `jane`.
    return sorted((w for w in words if len(w) >= MIN_CONTEXT_WORD), key=len, reverse=True)


def _is_common(folded: str) -> bool:
    common = blocklist()
    return (
        folded in common
        or _NOT_LETTERS.sub("", folded) in common
        or (folded.strip("0123456789!@#$%^&*()-_=+.,;:?~ ") in common)
    )


def _is_context(folded: str, words: list[str]) -> bool:
    if folded in words:
        return True
    remainder = folded
    for word in words:
        remainder = remainder.replace(word, "")
    return remainder != folded and not _NOT_LETTERS.sub("", remainder)


def _is_run(folded: str) -> bool:
    """Every step is +1 or every step is -1 (digits wrap: `…8901…` counts as ascending)."""
    steps = {ord(b) - ord(a) for a, b in itertools.pairwise(folded)}
    return steps <= {1, -9} or steps <= {-1, 9}


def validate(
    password: str,
    settings: Settings,
    *,
    email: str | None = None,
    has_mfa: bool = False,
    context: Iterable[str] = (),
) -> None:
    """Raise `PasswordRejected` when `password` may not be set (see module doc)."""
    ensure_not_too_long(password, settings)
    normal = normalize(password)
    shortest = min_length(settings, has_mfa=has_mfa)
    if len(normal) < shortest:
        raise PasswordRejected(
            "password_too_short", f"Passwords must be at least {shortest} characters long."
        )
    folded = normal.casefold()
    if _is_common(folded):
        raise PasswordRejected(
            "password_common", "This password is too common. Choose one that is not on lists."
        )
    if _is_context(folded, context_words(email, context)):
        raise PasswordRejected(
            "password_context",
            "Passwords must not be built from your email address or the service's name.",
        )
    if len(set(folded)) <= MAX_DISTINCT_FOR_REPETITIVE or _is_run(folded):
        raise PasswordRejected(
            "password_repetitive",
            "Passwords must not be a few characters repeated or a plain sequence.",
        )


async def hash_password(hashing: PasswordHashing, password: str) -> str:
    """argon2id hash of the normalised password (runs in the hashing pool, never on the loop)."""
    return await hashing.hash(normalize(password))


async def verify_password(
    hashing: PasswordHashing, stored: str | None, password: str
) -> tuple[bool, bool]:
    """(matches, needs_rehash) for the normalised password; `stored=None` burns equal work."""
    return await hashing.verify(stored, normalize(password))
