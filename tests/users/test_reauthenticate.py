"""`POST /api/auth/reauthenticate` (CHK-SE-06, CHK-SE-02) on both engines.

A session older than `AUTHKEEP_SESSION_FRESH_MINUTES` gets `403 reauth_required` on every
sensitive route; the inventory is read from the application's routes (every route whose
dependencies or handler call `sessions.is_fresh`), not from a hand list. Re-authenticating with
the password (plus a code with MFA on) ends that session and returns a fresh one, on which the
same routes pass the freshness check; the old token is 401 on the very next request. A wrong
password is refused and counted like any attempt. Under 16 concurrent re-authentications of
one session exactly one succeeds, since each success ends the session the others present
(FI-RACE-01 shape, 50 trials).
"""

from __future__ import annotations

import inspect
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import time_machine
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts
from identity_helpers import (
    SAME_ORIGIN,
    audit_rows,
    bearer,
    cheap_hashing,
    client_for,
    new_user,
    sign_in,
    started_app,
    user_row,
)

from admin.admin_helpers import make_admin
from authkeep.config import Settings
from mfa.mfa_helpers import CodeWatch, mfa_user, released_together
from support.secrets_scan import FIGURES, SCAN

START = datetime(2031, 7, 8, 9, 0, 10, tzinfo=UTC)
RACE_TRIALS = 50
CONTENDERS = 16


def _calls(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    for dependency in dependant.dependencies:
        if dependency.call is not None:
            yield dependency.call
        yield from _calls(dependency)


def _source(call: Callable[..., Any]) -> str:
    try:
        return inspect.getsource(call)
    except (OSError, TypeError):  # built-in or generated callables: not ours
        return ""


def checks_freshness(route: APIRoute) -> bool:
    """True when the route's handler or one of its dependencies calls `is_fresh`."""
    calls = (route.endpoint, *_calls(route.dependant))
    return any("is_fresh(" in _source(call) for call in calls)


def sensitive_routes(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path) of every route that needs a fresh session, read from the app."""
    found = []
    for context in iter_route_contexts(app.routes):
        route = context.route
        if isinstance(route, APIRoute) and checks_freshness(route):
            found.extend((method, context.path) for method in sorted(context.methods or ()))
    return sorted(found)


def concrete(path: str) -> str:
    """The path with every `{parameter}` replaced by an id nobody has (not the caller's
    session either, so ending "another" session is what is asked)."""
    parts = path.split("/")
    return "/".join(str(uuid.uuid4()) if p.startswith("{") else p for p in parts)


async def call(client: httpx.AsyncClient, method: str, path: str, token: str) -> httpx.Response:
    return await client.request(method, concrete(path), headers=bearer(token))


async def reauthenticate(
    client: httpx.AsyncClient, body: dict[str, str], headers: dict[str, str] | None = None
) -> httpx.Response:
    response = await client.post("/api/auth/reauthenticate", json=body, headers=headers)
    if response.status_code == 200:
        SCAN.register(response.json()["token"])
        SCAN.register(response.json()["csrf_token"])
    else:
        SCAN.record("reauthenticate response", response.text)
    return response


async def session_status(client: httpx.AsyncClient, token: str) -> int:
    return (await client.get("/api/auth/session", headers=bearer(token))).status_code


def stale_after(settings: Settings) -> timedelta:
    return timedelta(minutes=settings.session_fresh_minutes, seconds=1)


def error(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json().get("error", "")


async def test_stale_sessions_are_refused_on_every_sensitive_route_until_reauthenticated_CHK_SE_06(
    app: FastAPI, client: httpx.AsyncClient
):
    inventory = sensitive_routes(app)
    # The inventory is what the code says; these are known members, so an empty or broken
    # scan cannot pass unnoticed.
    for known in (
        ("DELETE", "/api/auth/sessions"),
        ("DELETE", "/api/auth/sessions/{session_id}"),
        ("POST", "/api/auth/password/change"),
        ("POST", "/api/auth/account/delete"),
        ("POST", "/api/admin/users/{user_id}/disable"),
    ):
        assert known in inventory
    assert ("POST", "/api/auth/reauthenticate") not in inventory
    with time_machine.travel(START, tick=False) as traveller:
        email, password = await make_admin(app)  # admin routes are in the inventory too
        token = (await sign_in(client, email, password)).json()["token"]
        client.cookies.clear()
        traveller.shift(stale_after(app.state.settings))
        stale = [error(await call(client, m, p, token)) for m, p in inventory]
        assert stale == [(403, "reauth_required")] * len(inventory)
        assert "reauthenticate" in (await call(client, *inventory[0], token)).json()["detail"]

        done = await reauthenticate(client, {"password": password}, bearer(token))
        assert done.status_code == 200, done.text
        client.cookies.clear()
        fresh = done.json()["token"]
        assert fresh != token
        assert done.json()["session"]["authenticated_at"].startswith("2031-07-08T09:10:11")
        assert (await client.get("/api/auth/session", headers=bearer(token))).status_code == 401
        after = [error(await call(client, m, p, fresh)) for m, p in inventory]
        passed = [e for e in after if e != (403, "reauth_required") and e[0] not in {401, 500}]
        assert passed == after, list(zip(inventory, after, strict=True))
    FIGURES.append(
        f"CHK-SE-06 ({'sqlite' if app.state.database.is_sqlite else 'postgresql'}): "
        f"{len(inventory)} sensitive routes found in the code; stale session -> "
        f"{stale.count((403, 'reauth_required'))}/{len(inventory)} 403 reauth_required; after "
        f"reauthenticate {len(passed)}/{len(inventory)} pass the freshness check"
    )


async def test_a_cookie_session_is_rotated_with_its_cookie_and_csrf_token_CHK_SE_02(
    app: FastAPI, client: httpx.AsyncClient
):
    with time_machine.travel(START, tick=False) as traveller:
        _email, password, old = await new_user(client)  # the jar holds the cookie
        before = (await client.get("/api/auth/session")).json()
        old_csrf, old_id = before["csrf_token"], before["session"]["id"]
        traveller.shift(stale_after(app.state.settings))
        body = {"password": password}
        tokenless = await reauthenticate(client, body, SAME_ORIGIN)
        assert error(tokenless) == (403, "csrf_rejected")  # a cookie request like any other
        done = await reauthenticate(client, body, {**SAME_ORIGIN, "X-CSRF-Token": old_csrf})
        assert done.status_code == 200, done.text
        new, new_csrf = done.json()["token"], done.json()["csrf_token"]
        assert f"authkeep_session={new}" in done.headers["set-cookie"]
        assert client.cookies.get("authkeep_session") == new
        assert new != old
        assert new_csrf != old_csrf
        me = await client.get("/api/auth/session")
        assert me.json()["csrf_token"] == new_csrf
        assert me.json()["session"]["id"] == done.json()["session"]["id"]
        # The fresh session passes the freshness check with the cookie and the new token.
        ends = await client.delete(
            "/api/auth/sessions", headers={**SAME_ORIGIN, "X-CSRF-Token": new_csrf}
        )
        assert ends.status_code == 200
        # The old cookie is dead on the very next request, and so is its CSRF token.
        client.cookies.set("authkeep_session", old)
        assert (await client.get("/api/auth/session")).status_code == 401
        client.cookies.set("authkeep_session", new)
        stale_csrf = {**SAME_ORIGIN, "X-CSRF-Token": old_csrf}
        assert error(await client.delete("/api/auth/sessions", headers=stale_csrf)) == (
            403,
            "csrf_rejected",
        )
    rows = await audit_rows(app, "auth.reauthenticate")
    assert [(r.outcome, r.target) for r in rows] == [("success", done.json()["session"]["id"])]
    assert rows[0].detail == {"method": "password", "replaced_session": old_id}


async def test_a_bearer_session_is_rotated_without_a_cookie(
    app: FastAPI, client: httpx.AsyncClient
):
    _email, password, old = await new_user(client)
    client.cookies.clear()
    done = await reauthenticate(client, {"password": password}, bearer(old))
    assert done.status_code == 200, done.text
    assert "set-cookie" not in done.headers
    assert (await client.get("/api/auth/session", headers=bearer(old))).status_code == 401
    new = done.json()["token"]
    assert (await client.get("/api/auth/session", headers=bearer(new))).status_code == 200
    # Re-authenticating needs a live session.
    again = await reauthenticate(client, {"password": password}, bearer(old))
    assert error(again) == (401, "unauthorized")


async def test_a_wrong_password_is_refused_counted_and_keeps_the_session(
    app: FastAPI, client: httpx.AsyncClient
):
    email, password, token = await new_user(client)
    client.cookies.clear()
    wrong = await reauthenticate(client, {"password": password + "-not"}, bearer(token))
    assert error(wrong) == (401, "invalid_credentials")
    assert (await user_row(app, email)).failed_login_count == 1
    assert (await client.get("/api/auth/session", headers=bearer(token))).status_code == 200
    rows = await audit_rows(app, "auth.reauthenticate")
    assert [(r.outcome, r.detail) for r in rows] == [("failure", {"reason": "wrong_password"})]
    right = await reauthenticate(client, {"password": password}, bearer(token))
    assert right.status_code == 200
    assert (await user_row(app, email)).failed_login_count == 0
    both = {"password": password, "code": "123456", "recovery_code": "abcde-fghjk"}
    new = bearer(right.json()["token"])
    assert error(await reauthenticate(client, both, new)) == (422, "validation_error")
    with_code = {"password": password, "code": "123456"}
    assert error(await reauthenticate(client, with_code, new)) == (409, "mfa_not_enabled")


def other_code(code: str) -> str:
    return f"{(int(code) + 1) % 1_000_000:06d}"


async def test_an_mfa_user_needs_a_code_CHK_SE_06(app: FastAPI, client: httpx.AsyncClient):
    watch = CodeWatch()
    with time_machine.travel(START, tick=False) as traveller:
        user = await mfa_user(client, watch)
        traveller.shift(stale_after(app.state.settings))
        headers = bearer(user.token)
        body = {"password": user.password}
        missing = await reauthenticate(client, body, headers)
        assert error(missing) == (403, "mfa_code_required")
        code = user.code()
        wrong = await reauthenticate(client, {**body, "code": other_code(code)}, headers)
        assert error(wrong) == (403, "invalid_mfa_code")
        wrong_password = {"password": user.password + "-not", "code": code}
        bad_password = await reauthenticate(client, wrong_password, headers)
        assert error(bad_password) == (401, "invalid_credentials")
        assert (await client.get("/api/auth/session", headers=headers)).status_code == 200
        done = await reauthenticate(client, {**body, "code": code}, headers)
        assert done.status_code == 200, done.text
        assert (await client.get("/api/auth/session", headers=headers)).status_code == 401
        assert (await user_row(app, user.email)).failed_login_count == 0

        # A recovery code works once.
        traveller.shift(stale_after(app.state.settings))
        headers = bearer(done.json()["token"])
        recovery = {**body, "recovery_code": user.recovery_codes[0]}
        again = await reauthenticate(client, recovery, headers)
        assert again.status_code == 200, again.text
        reused = await reauthenticate(client, recovery, bearer(again.json()["token"]))
        assert error(reused) == (403, "invalid_mfa_code")
    rows = await audit_rows(app, "auth.reauthenticate")
    assert [r.outcome for r in rows] == ["failure", "failure", "success", "success", "failure"]
    assert [r.detail.get("reason") or r.detail.get("factor") for r in rows if r.detail] == [
        "wrong_code",
        "wrong_password",
        "totp",
        "recovery_code",
        "wrong_code",
    ]
    assert watch.leaks() == []


async def test_sixteen_concurrent_reauthentications_of_one_session_one_succeeds_FI_RACE_01(
    migrated_url: str, make_settings: Callable[..., Settings]
):
    """Each success ends the session the others present, so at most one can succeed, and one
    does: exactly 1 x 200 and 15 x 401 in every trial. The losers' correct passwords are not
    left counted as failures. The progressive sign-in delay is set past 16 here: it would
    turn some losers' answers into 429 and is tested on its own."""
    async with started_app(
        make_settings, migrated_url, login_delay_after=100, login_ip_failures_per_minute=1000
    ) as app:
        app.state.passwords = cheap_hashing()
        async with client_for(app) as client:
            email, password, _token = await new_user(client)
            client.cookies.clear()
            outcomes = []
            winners = []
            for _trial in range(RACE_TRIALS):
                token = (await sign_in(client, email, password)).json()["token"]
                client.cookies.clear()
                answers: list[httpx.Response] = []

                async def attempt(
                    _index: int, token: str = token, answers: list[httpx.Response] = answers
                ) -> int:
                    response = await client.post(
                        "/api/auth/reauthenticate",
                        json={"password": password},
                        headers=bearer(token),
                    )
                    answers.append(response)
                    return response.status_code

                outcome = await released_together(CONTENDERS, attempt)
                outcomes.append(outcome)
                for won in (r.json()["token"] for r in answers if r.status_code == 200):
                    winners.append(SCAN.register(won))
                    assert (await session_status(client, won)) == 200
                assert (await session_status(client, token)) == 401
            expected = Counter({200: 1, 401: CONTENDERS - 1})
            assert outcomes == [expected] * RACE_TRIALS
            assert (await user_row(app, email)).failed_login_count == 0
            rows = await audit_rows(app, "auth.reauthenticate")
            assert sum(r.outcome == "success" for r in rows) == RACE_TRIALS
            lost = Counter(r.detail.get("reason") for r in rows if r.outcome == "failure")
            assert set(lost) <= {"session_ended"}
            engine = "sqlite" if app.state.database.is_sqlite else "postgresql"
            FIGURES.append(
                f"CHK-SE-02 reauthenticate race ({engine}): {RACE_TRIALS} trials x {CONTENDERS} "
                f"concurrent with one session -> exactly 1 success + {CONTENDERS - 1} x 401 in "
                f"{outcomes.count(expected)}/{RACE_TRIALS}; of the losers, {lost['session_ended']} "
                "were refused after their password check (session ended), "
                f"{RACE_TRIALS * (CONTENDERS - 1) - lost['session_ended']} at the session check; "
                "failed_login_count 0 after"
            )
    assert len(set(winners)) == RACE_TRIALS
