"""The session-bound CSRF token (CHK-CK-02, BI-03) on both engines.

A cookie-authenticated request that changes state needs both the same-site rule
(`Sec-Fetch-Site`, else `Origin`) and `X-CSRF-Token` equal to the session's `csrf_token`. The
matrix sends every combination of method, `Sec-Fetch-Site`, `Origin` and token through real
routes and checks each answer against the documented rule: every cross-site or tokenless
request → 403 `csrf_rejected`, same-site with the right token → 2xx, another session's token →
403. A refused change leaves no trace (a refused PATCH does not rename the key). Bearer requests
and safe methods are unaffected. The round trip: the token from sign-in is the one
`GET /api/auth/session` returns, the same for the session's life, and verifies for its own
session only (also as a hypothesis property over arbitrary session tokens and secrets).
"""

from __future__ import annotations

import functools
import itertools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from hypothesis import given, settings
from hypothesis import strategies as st
from identity_helpers import bearer, client_for, new_email, new_user, sign_in, started_app

from authkeep.config import Settings, load_settings
from authkeep.core.security import token_digest
from authkeep.sessions.csrf import csrf_token, csrf_token_matches
from support.secrets_scan import FIGURES, SCAN

OWN = "http://testserver"
TRUSTED = "https://app.example.com"
FOREIGN = "https://evil.example"
FETCH_SITES = (None, "same-origin", "none", "same-site", "cross-site")
ORIGINS = (None, OWN, TRUSTED, FOREIGN, "null")
TOKENS = ("none", "right", "other_session", "other_user", "tampered", "malformed")
METHODS = ("POST", "PATCH", "DELETE")  # every unsafe method the API has a route for


def same_site(fetch_site: str | None, origin: str | None) -> bool:
    """The documented rule (docs/identity.md, "Cookies and bearer tokens")."""
    if fetch_site in {"same-origin", "none"}:
        return True
    if fetch_site == "same-site":
        return origin == TRUSTED
    if fetch_site is None:
        return origin in {OWN, TRUSTED}
    return False


def malformed_tokens(right: str) -> list[str]:
    """Values that are not the token: empty, short, non-hex, case-changed, cut, extended,
    and very long."""
    return ["", "0", "z" * 64, right.upper(), right[:-1], right + "0", "a" * 4096]


@dataclass
class Browser:
    """One user signed in with the cookie (in `client`'s jar), the tokens of other sessions,
    and a key of theirs to change."""

    client: httpx.AsyncClient
    bearer_token: str
    right: str
    other_session: str
    other_user: str
    key_id: str

    def tampered(self) -> str:
        last = "0" if self.right[-1] != "0" else "1"
        return self.right[:-1] + last


async def signed_in_browser(client: httpx.AsyncClient, spare: httpx.AsyncClient) -> Browser:
    email, password, token = await new_user(client)
    me = await client.get("/api/auth/session")  # the cookie alone: a safe request
    assert me.status_code == 200, me.text
    right = SCAN.register(me.json()["csrf_token"])
    # Other sessions are made with another client, so `client`'s cookie stays this session's.
    other_session = (await sign_in(spare, email, password)).json()["csrf_token"]
    await new_user(spare)  # another user, signed in with `spare`'s cookie
    other_user = (await spare.get("/api/auth/session")).json()["csrf_token"]
    created = await client.post("/api/keys", json={"name": "matrix"}, headers=bearer(token))
    assert created.status_code == 201, created.text
    SCAN.register(created.json()["key"])
    return Browser(
        client,
        token,
        right,
        SCAN.register(other_session),
        SCAN.register(other_user),
        created.json()["id"],
    )


def token_value(browser: Browser, kind: str, index: int) -> str | None:
    values: dict[str, Callable[[], str | None]] = {
        "none": lambda: None,
        "right": lambda: browser.right,
        "other_session": lambda: browser.other_session,
        "other_user": lambda: browser.other_user,
        "tampered": browser.tampered,
        "malformed": lambda: malformed_tokens(browser.right)[
            index % len(malformed_tokens(browser.right))
        ],
    }
    return values[kind]()


async def send(
    browser: Browser, method: str, index: int, headers: dict[str, str]
) -> httpx.Response:
    """One unsafe request on a route that answers 2xx every time it is allowed."""
    client, key = browser.client, browser.key_id
    if method == "POST":
        return await client.post(f"/api/keys/{key}/revoke", headers=headers)
    if method == "PATCH":
        body = {"name": f"case-{index}"}
        return await client.patch(f"/api/keys/{key}", json=body, headers=headers)
    return await client.delete("/api/auth/sessions", headers=headers)  # ends the others


async def key_name(browser: Browser) -> str:
    response = await browser.client.get(f"/api/keys/{browser.key_id}")  # cookie, safe method
    assert response.status_code == 200, response.text
    return str(response.json()["name"])


def case_headers(
    browser: Browser, fetch_site: str | None, origin: str | None, kind: str, index: int
) -> dict[str, str]:
    headers = {}
    if fetch_site is not None:
        headers["Sec-Fetch-Site"] = fetch_site
    if origin is not None:
        headers["Origin"] = origin
    value = token_value(browser, kind, index)
    if value is not None:
        headers["X-CSRF-Token"] = value
    return headers


async def run_case(
    browser: Browser, index: int, method: str, fetch_site: str | None, origin: str | None, kind: str
) -> tuple[bool, int]:
    """Send one case; returns (answered as the rule says, status). A refused PATCH must also
    leave the key's name as it was, an allowed one must change it."""
    before = await key_name(browser) if method == "PATCH" else None
    headers = case_headers(browser, fetch_site, origin, kind, index)
    response = await send(browser, method, index, headers)
    allowed = same_site(fetch_site, origin) and kind == "right"
    if allowed:
        ok = 200 <= response.status_code < 300
    else:
        ok = (response.status_code, response.json().get("error")) == (403, "csrf_rejected")
    if method == "PATCH":
        ok = ok and (await key_name(browser) != before) is allowed
    return ok, response.status_code


async def test_every_cross_site_or_tokenless_cookie_request_is_refused_CHK_CK_02(
    migrated_url: str, make_settings: Callable[..., Settings]
):
    async with (
        started_app(make_settings, migrated_url, trusted_origins=[TRUSTED]) as app,
        client_for(app) as client,
        client_for(app) as spare,
    ):
        browser = await signed_in_browser(client, spare)
        cases = list(itertools.product(METHODS, FETCH_SITES, ORIGINS, TOKENS))
        tally: Counter[str] = Counter()
        mismatches = []
        for index, (method, fetch_site, origin, kind) in enumerate(cases):
            ok, status = await run_case(browser, index, method, fetch_site, origin, kind)
            if not ok:
                mismatches.append((method, fetch_site, origin, kind, status))
            site_ok = same_site(fetch_site, origin)
            groups = {
                "all": True,
                "must refuse": not (site_ok and kind == "right"),
                "cross-site or tokenless": not site_ok or kind == "none",
                "same site, another session's token": site_ok
                and kind in {"other_session", "other_user"},
                "same site, right token": site_ok and kind == "right",
            }
            for group, member in groups.items():
                if member:
                    tally[group] += 1
                    tally[f"{group}: 403"] += status == 403
                    tally[f"{group}: 2xx"] += 200 <= status < 300
        assert mismatches == []
        assert tally["all"] == 3 * 5 * 5 * 6
        for group in (
            "must refuse",
            "cross-site or tokenless",
            "same site, another session's token",
        ):
            assert tally[f"{group}: 403"] == tally[group] > 0, group
        assert tally["same site, right token: 2xx"] == tally["same site, right token"] > 0
        assert tally["all: 403"] + tally["all: 2xx"] == tally["all"]
        engine = "sqlite" if app.state.database.is_sqlite else "postgresql"
        FIGURES.append(
            f"CHK-CK-02 CSRF matrix ({engine}): {tally['all']} cases (3 methods x 5 "
            "Sec-Fetch-Site x 5 Origin x 6 tokens): "
            + "; ".join(
                f"{group} {tally[group + ': 403']}/{tally[group]} 403"
                for group in (
                    "must refuse",
                    "cross-site or tokenless",
                    "same site, another session's token",
                )
            )
            + f"; same site, right token {tally['same site, right token: 2xx']}/"
            f"{tally['same site, right token']} 2xx"
        )


async def test_sign_in_keeps_the_login_csrf_rule_CHK_CK_03(
    migrated_url: str, make_settings: Callable[..., Settings]
):
    """Sign-in has no session yet, so only the same-site half applies, and a client that sends
    neither header (not a browser) passes: every `Sec-Fetch-Site` x `Origin` pair. Unknown
    addresses, one per case, so the answer when let through is `invalid_credentials`."""
    async with (
        started_app(make_settings, migrated_url, trusted_origins=[TRUSTED]) as app,
        client_for(app) as client,
    ):
        answers = []
        for fetch_site, origin in itertools.product(FETCH_SITES, ORIGINS):
            headers = {"Sec-Fetch-Site": fetch_site, "Origin": origin}
            sent = {name: value for name, value in headers.items() if value is not None}
            body = {"email": new_email("nobody"), "password": "not-the-password-0"}
            response = await client.post("/api/auth/sign-in", json=body, headers=sent)
            let_through = same_site(fetch_site, origin) or fetch_site is origin is None
            expected = (401, "invalid_credentials") if let_through else (403, "csrf_rejected")
            answers.append((response.status_code, response.json()["error"]) == expected)
        assert answers == [True] * len(FETCH_SITES) * len(ORIGINS)


async def test_missing_and_wrong_tokens_say_what_to_send(app: Any, client: httpx.AsyncClient):
    await new_user(client)
    same_origin = {"Sec-Fetch-Site": "same-origin"}
    missing = await client.delete("/api/auth/sessions", headers=same_origin)
    assert (missing.status_code, missing.json()["error"]) == (403, "csrf_rejected")
    assert "X-CSRF-Token" in missing.json()["detail"]
    assert "csrf_token" in missing.json()["detail"]
    wrong = await client.delete(
        "/api/auth/sessions", headers={**same_origin, "X-CSRF-Token": "0" * 64}
    )
    assert (wrong.status_code, wrong.json()["error"]) == (403, "csrf_rejected")
    assert "does not belong to this session" in wrong.json()["detail"]
    cross = await client.delete("/api/auth/sessions", headers={"Sec-Fetch-Site": "cross-site"})
    assert cross.json()["detail"].startswith("Cross-site request refused")


async def test_bearer_requests_and_safe_methods_need_no_token(app: Any, client: httpx.AsyncClient):
    """A bearer request is not a cookie request, even with a cookie in the jar and cross-site
    headers; a GET with the cookie never changes state and needs no token (HEAD has no
    routes)."""
    _email, _password, token = await new_user(client)
    cross = {"Sec-Fetch-Site": "cross-site", "Origin": FOREIGN}
    created = await client.post(
        "/api/keys", json={"name": "bearer"}, headers={**cross, **bearer(token)}
    )
    assert created.status_code == 201
    SCAN.register(created.json()["key"])
    bogus = {**cross, **bearer(token), "X-CSRF-Token": "not-the-token"}
    assert (await client.delete("/api/auth/sessions", headers=bogus)).status_code == 200
    assert (await client.get("/api/auth/sessions", headers=cross)).status_code == 200
    assert (await client.get("/api/auth/session", headers=cross)).status_code == 200


async def test_the_token_round_trips_for_its_session_only_BI_03(
    app: Any, client: httpx.AsyncClient
):
    """Sign-in's `csrf_token` is what `GET /api/auth/session` returns for that session, with
    the cookie or the bearer token, on every call; another session of the same user has
    another one; signing out ends the token's use with its session."""
    email, password, token = await new_user(client)
    first = (await client.get("/api/auth/session")).json()["csrf_token"]
    assert (await client.get("/api/auth/session", headers=bearer(token))).json()[
        "csrf_token"
    ] == first
    again = await sign_in(client, email, password)  # rotates the cookie's session
    second = again.json()["csrf_token"]
    assert second != first
    assert (await client.get("/api/auth/session")).json()["csrf_token"] == second
    same_origin = {"Sec-Fetch-Site": "same-origin"}
    stale = await client.post("/api/auth/sign-out", headers={**same_origin, "X-CSRF-Token": first})
    assert stale.status_code == 403
    out = await client.post("/api/auth/sign-out", headers={**same_origin, "X-CSRF-Token": second})
    assert out.status_code == 204
    assert len(first) == len(second) == 64
    assert token not in {first, second}


@functools.cache
def two_servers() -> tuple[Settings, Settings]:
    """Settings of two deployments with different server secrets."""
    return (
        load_settings(secret_key="s" * 48, data_dir="/nonexistent-a"),
        load_settings(secret_key="t" * 48, data_dir="/nonexistent-b"),
    )


session_tokens = st.text(min_size=1, max_size=128)


@given(session_tokens, session_tokens)
@settings(max_examples=500, deadline=None)
def test_a_token_verifies_for_its_session_and_no_other_BI_03(mine: str, theirs: str):
    server, other_server = two_servers()
    made = csrf_token(server, token_digest(mine))
    assert csrf_token_matches(server, mine, made)
    assert mine == theirs or not csrf_token_matches(server, theirs, made)
    # Bound to the server secret too: another deployment's token for the same session fails.
    assert not csrf_token_matches(other_server, mine, made)
    # Never the session token or its stored digest.
    assert made not in {mine, token_digest(mine)}
