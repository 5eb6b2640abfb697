"""The CHK-CK-04 response check: which browser security headers an answer of authkeep lacks.

One function, `header_faults`, so any test that drives the app (the route inventory in
tests/core/test_security_headers.py, a schema fuzzer's response hook) applies the same rule.
"""

from __future__ import annotations

from collections.abc import Mapping

ONE_YEAR = 31_536_000
# The one answer allowed to be cached: public keys, by design (tokens/routes.py).
CACHEABLE = {"/.well-known/jwks.json": "public, max-age=300"}


def csp_directives(policy: str) -> dict[str, str]:
    """`default-src 'none'; base-uri 'none'` → {"default-src": "'none'", "base-uri": "'none'"}."""
    directives: dict[str, str] = {}
    for part in policy.split(";"):
        name, _, value = part.strip().partition(" ")
        if name:
            directives.setdefault(name.lower(), value.strip())
    return directives


def hsts_max_age(value: str | None) -> int | None:
    for part in (value or "").split(";"):
        name, _, number = part.strip().partition("=")
        if name.lower() == "max-age" and number.isdigit():
            return int(number)
    return None


def header_faults(
    path: str, status: int, headers: Mapping[str, str], body: bytes, *, https: bool
) -> list[str]:
    """The names of the headers missing or wrong on one answer (empty when it passes).

    Every answer: `X-Content-Type-Options: nosniff`, `Referrer-Policy: no-referrer`, a CSP whose
    `default-src`, `object-src`, `base-uri` and `frame-ancestors` are `'none'`, and
    `Cache-Control: no-store` (the JWKS excepted). HSTS for a year or more exactly when the
    request counts as HTTPS. A body is labelled with its charset.
    """
    faults: list[str] = []
    lowered = {name.lower(): value for name, value in headers.items()}
    if lowered.get("x-content-type-options") != "nosniff":
        faults.append("X-Content-Type-Options")
    if lowered.get("referrer-policy") != "no-referrer":
        faults.append("Referrer-Policy")
    policy = csp_directives(lowered.get("content-security-policy", ""))
    default = policy.get("default-src")
    effective = {
        "default-src": default,
        "object-src": policy.get("object-src", default),  # falls back to default-src
        "base-uri": policy.get("base-uri"),  # no fallback
        "frame-ancestors": policy.get("frame-ancestors"),  # no fallback
    }
    faults += [f"CSP {name}" for name, value in effective.items() if value != "'none'"]
    expected_cache = CACHEABLE.get(path, "no-store") if status < 400 else "no-store"
    if lowered.get("cache-control") != expected_cache:
        faults.append("Cache-Control")
    max_age = hsts_max_age(lowered.get("strict-transport-security"))
    if https and (max_age is None or max_age < ONE_YEAR):
        faults.append("Strict-Transport-Security")
    if not https and "strict-transport-security" in lowered:
        faults.append("Strict-Transport-Security (over plain HTTP)")
    if body and "charset=utf-8" not in lowered.get("content-type", "").lower():
        faults.append("Content-Type charset")
    return faults
