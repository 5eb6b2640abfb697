"""CSRF protection for cookie-authenticated requests (CHK-CK-02).

A cookie request that may change state (not GET, HEAD or OPTIONS) must pass two checks
(`ensure_cookie_request_allowed`):
1. it came from this site (`sessions.cookies.cross_site`: `Sec-Fetch-Site`, else `Origin`);
2. it carries the session's CSRF token in the `X-CSRF-Token` header (`csrf_token`).

The token is HMAC-SHA-256 under the server secret (`AUTHKEEP_SECRET_KEY`) over a purpose label
and the session token's SHA-256 digest: the value the database stores, never the token itself.
So it is the same for the whole life of a session, differs between sessions, cannot be made
without the server secret (not even from a copy of the database), and is checked without a
database column or lookup. The browser's script cannot read the HttpOnly cookie; it gets the
token from the sign-in answer or from `GET /api/auth/session`. Bearer requests need neither
check: a page on another site cannot make the browser send an `Authorization` header.

Sign-in and the other routes used without a session apply only the first check (CHK-CK-03):
there is no session to bind a token to yet.
"""

from __future__ import annotations

from starlette.requests import Request

from authkeep.config import Settings
from authkeep.core.secrets import secret_for
from authkeep.core.security import keyed_digest, same_secret, token_digest
from authkeep.errors import CsrfRejected
from authkeep.sessions.cookies import CSRF_HEADER, SAFE_METHODS, cross_site

_LABEL = "authkeep.csrf.v1:"
MISSING_TOKEN = (
    "This request signs in with the session cookie, so it must carry the session's CSRF token "
    f"in the {CSRF_HEADER} header: `csrf_token` from the sign-in answer or from "
    "GET /api/auth/session."
)
WRONG_TOKEN = (
    f"The {CSRF_HEADER} header does not belong to this session. Read `csrf_token` again from "
    "GET /api/auth/session."
)


def csrf_token(settings: Settings, token_hash: str) -> str:
    """The CSRF token of the session whose stored token digest is `token_hash` (64 hex)."""
    secret = secret_for(settings, "secret_key").get_secret_value()
    return keyed_digest(secret, _LABEL + token_hash)


def csrf_token_matches(settings: Settings, session_token: str, presented: str) -> bool:
    """Whether `presented` is the CSRF token of the session `session_token` (constant time)."""
    return same_secret(csrf_token(settings, token_digest(session_token)), presented)


def ensure_cookie_request_allowed(request: Request, settings: Settings, session_token: str) -> None:
    """The two CSRF checks for a request authenticated by the cookie `session_token` (see the
    module doc); raises `CsrfRejected`. Safe methods pass. Runs before the session is looked
    up, so a refused request costs no database work and does not extend the session."""
    if request.method in SAFE_METHODS:
        return
    if cross_site(request, settings):
        raise CsrfRejected()
    presented = request.headers.get(CSRF_HEADER)
    if not presented:
        raise CsrfRejected(MISSING_TOKEN)
    if not csrf_token_matches(settings, session_token, presented):
        raise CsrfRejected(WRONG_TOKEN)
