"""SCRAM-SHA-256 password verifiers, computed here so a role's plaintext password never reaches
the server (SPEC §8 `db roles`).

`ALTER ROLE … PASSWORD 'plaintext'` puts the secret in the statement text, where `log_statement`,
an error's `STATEMENT:` log line or `pg_stat_statements` can keep it. PostgreSQL accepts an
already-hashed verifier instead (as psql's `\\password` sends), and can compare a password with
the stored verifier without ever seeing it. SASLprep follows PostgreSQL's `pg_saslprep` (and
asyncpg's client side), so non-ASCII passwords log in.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import stringprep
import unicodedata

ITERATIONS = 4096  # PostgreSQL's default scram_iterations
_PROHIBITED = (
    stringprep.in_table_a1,  # PostgreSQL treats unassigned code points as prohibited
    stringprep.in_table_c12,
    stringprep.in_table_c21_c22,
    stringprep.in_table_c3,
    stringprep.in_table_c4,
    stringprep.in_table_c5,
    stringprep.in_table_c6,
    stringprep.in_table_c7,
    stringprep.in_table_c8,
    stringprep.in_table_c9,
)


def saslprep(password: str) -> bytes:
    """RFC 4013 as PostgreSQL applies it: on any failure the raw UTF-8 bytes are used."""
    if password.isascii():
        return password.encode()
    mapped = "".join(
        " " if stringprep.in_table_c12(c) else c for c in password if not stringprep.in_table_b1(c)
    )
    normal = unicodedata.normalize("NFKC", mapped)
    if not normal or any(check(c) for c in normal for check in _PROHIBITED):
        return password.encode()
    if any(stringprep.in_table_d1(c) for c in normal) and (
        not (stringprep.in_table_d1(normal[0]) and stringprep.in_table_d1(normal[-1]))
        or any(stringprep.in_table_d2(c) for c in normal)
    ):
        return password.encode()
    return normal.encode()


def _keys(password: str, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    salted = hashlib.pbkdf2_hmac("sha256", saslprep(password), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    return hashlib.sha256(client_key).digest(), server_key


def verifier(password: str, *, iterations: int = ITERATIONS) -> str:
    """`SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, with a fresh random salt."""
    salt = secrets.token_bytes(16)
    stored, server = _keys(password, salt, iterations)
    b64 = base64.b64encode
    return (
        f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}"
        f"${b64(stored).decode()}:{b64(server).decode()}"
    )


def matches(password: str, stored_verifier: str | None) -> bool:
    """True when `stored_verifier` (from pg_authid) was made from `password`. Never raises."""
    if not stored_verifier or not stored_verifier.startswith("SCRAM-SHA-256$"):
        return False
    try:
        _, params, keys = stored_verifier.split("$")
        iterations, salt = params.split(":")
        stored_key, server_key = keys.split(":")
        stored, server = _keys(password, base64.b64decode(salt), int(iterations))
    except ValueError:  # a malformed verifier (also binascii.Error) is simply not a match
        return False
    return hmac.compare_digest(stored, base64.b64decode(stored_key)) and hmac.compare_digest(
        server, base64.b64decode(server_key)
    )
