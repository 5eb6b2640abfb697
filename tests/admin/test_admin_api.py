"""`/api/admin`: the authorization matrix for every admin route (CHK-AC-01), the fresh-session
rule and one audit row per admin action (CHK-AC-06, CHK-LG-01), disable and force-reset taking
effect at once (CHK-SE-05, CHK-PW-06), and no mass assignment of roles (CHK-AC-03)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import time_machine
from admin_helpers import bearer, make_admin, new_email, new_user, sign_in, signed_in_admin
from fastapi import FastAPI
from sqlalchemy import select

from authkeep.audit.models import AuditEvent
from authkeep.users.models import User
from users.identity_helpers import (
    count_rows,
    database,
    same_origin_csrf,
    sign_up,
    strong_password,
)

START = datetime(2031, 6, 1, 9, 0, tzinfo=UTC)
# Every admin route but the setup endpoint, which a setup token authorises (test_setup_link).
ADMIN_ROUTES = {
    ("GET", "/api/admin/users"),
    ("POST", "/api/admin/users/{user_id}/disable"),
    ("POST", "/api/admin/users/{user_id}/enable"),
    ("POST", "/api/admin/users/{user_id}/force-password-reset"),
    ("POST", "/api/admin/users/{user_id}/mfa/reset"),
    ("DELETE", "/api/admin/users/{user_id}/sessions"),
    ("GET", "/api/admin/audit"),
}
ACTIONS = sorted(r for r in ADMIN_ROUTES if r[0] != "GET")


async def call(
    client: httpx.AsyncClient, route: tuple[str, str], user_id: uuid.UUID, token: str | None
) -> httpx.Response:
    method, path = route
    headers = bearer(token) if token else {}
    return await client.request(method, path.format(user_id=user_id), headers=headers)


async def user_id(app: FastAPI, email: str) -> uuid.UUID:
    async with database(app).session_scope() as db:
        found = await db.scalar(select(User.id).where(User.email == email))
        assert found is not None
        return found


def test_the_matrix_covers_every_admin_route(app: FastAPI):
    served = {
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        # A user's API keys have their own matrix (tests/keys/test_keys_ownership.py).
        if path.startswith("/api/admin") and not path.startswith("/api/admin/users/{user_id}/keys")
        for method, operation in operations.items()
        # Plans and subscriptions too (tests/plans/test_admin_plans.py).
        if "plans" not in operation.get("tags", [])
    }
    assert served - {("POST", "/api/admin/setup")} == ADMIN_ROUTES


async def test_authorization_matrix_anonymous_401_user_403_admin_2xx_CHK_AC_01(
    app: FastAPI, client: httpx.AsyncClient
):
    _, _, user_token = await new_user(client)
    victim_email, _, _ = await new_user(client)
    victim = await user_id(app, victim_email)
    _, _, admin_token = await signed_in_admin(app, client)
    client.cookies.clear()
    for route in sorted(ADMIN_ROUTES):
        anonymous = await call(client, route, victim, None)
        assert (anonymous.status_code, anonymous.json()["error"]) == (401, "unauthorized"), route
        as_user = await call(client, route, victim, user_token)
        assert (as_user.status_code, as_user.json()["error"]) == (403, "forbidden"), route
        as_admin = await call(client, route, victim, admin_token)
        assert as_admin.status_code == 200, (route, as_admin.text)
        assert as_admin.headers["cache-control"] == "no-store"
    denied = [e for e in await audit_events(app) if e.action == "admin.access"]
    assert len(denied) == len(ADMIN_ROUTES)
    assert {(e.outcome, e.detail["reason"]) for e in denied} == {("denied", "not_admin")}


async def audit_events(app: FastAPI) -> list[AuditEvent]:
    async with database(app).session_scope() as db:
        return list((await db.scalars(select(AuditEvent).order_by(AuditEvent.at))).all())


async def test_actions_need_a_fresh_session_reads_do_not_CHK_AC_06(app: FastAPI):
    with time_machine.travel(START, tick=False) as traveller:
        async with client_at(app) as client:
            victim_email, _, _ = await new_user(client)
            victim = await user_id(app, victim_email)
            _, _, token = await signed_in_admin(app, client)
            traveller.shift(timedelta(minutes=11))  # past fresh (10), within idle (30)
            for route in ACTIONS:
                response = await call(client, route, victim, token)
                assert (response.status_code, response.json()["error"]) == (
                    403,
                    "reauth_required",
                ), route
            for route in sorted(r for r in ADMIN_ROUTES if r[0] == "GET"):
                assert (await call(client, route, victim, token)).status_code == 200
    denied = [e for e in await audit_events(app) if e.action == "admin.access"]
    assert [e.detail["reason"] for e in denied] == ["reauth_required"] * len(ACTIONS)
    assert (await user_row_by_id(app, victim)).disabled_at is None


def client_at(app: FastAPI) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


async def user_row_by_id(app: FastAPI, user_id: uuid.UUID) -> User:
    async with database(app).session_scope() as db:
        user = await db.get(User, user_id)
        assert user is not None
        return user


async def test_disable_ends_every_session_and_enable_restores_sign_in_CHK_SE_05(
    app: FastAPI, client: httpx.AsyncClient
):
    email, password, first = await new_user(client)
    client.cookies.clear()
    second = (await sign_in(client, email, password)).json()["token"]
    victim = await user_id(app, email)
    _, _, token = await signed_in_admin(app, client)
    response = await client.post(f"/api/admin/users/{victim}/disable", headers=bearer(token))
    assert response.status_code == 200
    body = response.json()
    assert (body["changed"], body["sessions_ended"], body["user"]["disabled"]) == (True, 2, True)
    for old in (first, second):
        assert (await client.get("/api/auth/session", headers=bearer(old))).status_code == 401
    client.cookies.clear()
    assert (await sign_in(client, email, password)).status_code == 401
    again = await client.post(f"/api/admin/users/{victim}/disable", headers=bearer(token))
    assert (again.json()["changed"], again.json()["sessions_ended"]) == (False, 0)
    enabled = await client.post(f"/api/admin/users/{victim}/enable", headers=bearer(token))
    assert (enabled.json()["changed"], enabled.json()["user"]["disabled"]) == (True, False)
    assert (await sign_in(client, email, password)).status_code == 200


async def test_force_password_reset_ends_sessions_and_blocks_the_right_password_CHK_PW_06(
    app: FastAPI, client: httpx.AsyncClient
):
    email, password, old = await new_user(client)
    victim = await user_id(app, email)
    _, _, token = await signed_in_admin(app, client)
    path = f"/api/admin/users/{victim}/force-password-reset"
    response = await client.post(path, headers=bearer(token))
    assert response.status_code == 200
    assert response.json()["user"]["password_reset_required"] is True
    assert response.json()["sessions_ended"] == 1
    assert (await client.get("/api/auth/session", headers=bearer(old))).status_code == 401
    right = await sign_in(client, email, password)
    assert (right.status_code, right.json()["error"]) == (403, "password_reset_required")
    wrong = await sign_in(client, email, strong_password())
    assert (wrong.status_code, wrong.json()["error"]) == (401, "invalid_credentials")


async def test_end_sessions_leaves_the_account_usable(app: FastAPI, client: httpx.AsyncClient):
    email, password, old = await new_user(client)
    victim = await user_id(app, email)
    _, _, token = await signed_in_admin(app, client)
    response = await client.delete(f"/api/admin/users/{victim}/sessions", headers=bearer(token))
    assert response.json() == {"revoked": 1}
    assert (await client.get("/api/auth/session", headers=bearer(old))).status_code == 401
    assert (await sign_in(client, email, password)).status_code == 200


async def test_admins_cannot_disable_or_force_reset_themselves(
    app: FastAPI, client: httpx.AsyncClient
):
    email, _, token = await signed_in_admin(app, client)
    me = await user_id(app, email)
    for action in ("disable", "force-password-reset"):
        response = await client.post(f"/api/admin/users/{me}/{action}", headers=bearer(token))
        assert (response.status_code, response.json()["error"]) == (409, "cannot_target_self")
    assert (await client.get("/api/auth/session", headers=bearer(token))).status_code == 200
    missing = await client.post(f"/api/admin/users/{uuid.uuid4()}/disable", headers=bearer(token))
    assert (missing.status_code, missing.json()["error"]) == (404, "unknown_user")


async def test_list_users_pages_and_filters(app: FastAPI, client: httpx.AsyncClient):
    for tag in ("ann", "anna", "bob"):
        await sign_up(client, f"{tag}@list.example", strong_password())
    _, _, token = await signed_in_admin(app, client)
    page = await client.get(
        "/api/admin/users", params={"email_prefix": "AN", "limit": 1}, headers=bearer(token)
    )
    assert [u["email"] for u in page.json()["users"]] == ["ann@list.example"]
    assert page.json()["next_after"] == "ann@list.example"
    rest = await client.get(
        "/api/admin/users",
        params={"email_prefix": "an", "after": "ann@list.example"},
        headers=bearer(token),
    )
    assert [u["email"] for u in rest.json()["users"]] == ["anna@list.example"]
    assert rest.json()["next_after"] is None
    admins = await client.get("/api/admin/users", params={"role": "admin"}, headers=bearer(token))
    assert [u["role"] for u in admins.json()["users"]] == ["admin"]
    wildcard = await client.get(
        "/api/admin/users", params={"email_prefix": "%"}, headers=bearer(token)
    )
    assert wildcard.json()["users"] == []
    too_many = await client.get("/api/admin/users", params={"limit": 201}, headers=bearer(token))
    assert too_many.status_code == 422


async def test_every_admin_action_writes_one_complete_audit_row_CHK_AC_06_CHK_LG_01(
    app: FastAPI, client: httpx.AsyncClient
):
    email, _, _ = await new_user(client)
    victim = await user_id(app, email)
    admin_email, _, token = await signed_in_admin(app, client)
    admin_id = await user_id(app, admin_email)
    before = len(await audit_events(app))
    request_ids = []
    for route in [*ACTIONS, *ACTIONS]:
        response = await call(client, route, victim, token)
        assert response.status_code == 200, (route, response.text)
        request_ids.append(response.headers["x-request-id"])
    rows = (await audit_events(app))[before:]
    assert len(rows) == 2 * len(ACTIONS), "one row per action, none for reads"
    expected = {
        "DELETE": "admin.user.sessions_revoke",
        "disable": "admin.user.disable",
        "enable": "admin.user.enable",
        "force-password-reset": "admin.user.force_password_reset",
        "mfa/reset": "admin.user.mfa_reset",
    }
    for (method, path), row, request_id in zip(
        [*ACTIONS, *ACTIONS], rows, request_ids, strict=True
    ):
        action = expected[method if method == "DELETE" else path.split("{user_id}/", 1)[1]]
        assert (row.action, row.outcome) == (action, "success")
        assert (row.actor, row.actor_id, row.target) == (admin_email, admin_id, str(victim))
        assert row.at.tzinfo is not None
        assert row.at.utcoffset() == timedelta(0)
        assert (row.ip, row.user_agent, row.request_id) == (
            "127.0.0.1",
            f"python-httpx/{httpx.__version__}",
            request_id,
        )
        assert row.detail is not None
        assert row.detail["email"] == email


async def test_audit_log_filters_newest_first(app: FastAPI, client: httpx.AsyncClient):
    email, _, _ = await new_user(client)
    victim = await user_id(app, email)
    admin_email, _, token = await signed_in_admin(app, client)
    admin_id = await user_id(app, admin_email)
    for action in ("disable", "enable", "disable"):
        await client.post(f"/api/admin/users/{victim}/{action}", headers=bearer(token))
    response = await client.get(
        "/api/admin/audit", params={"actor_id": str(admin_id)}, headers=bearer(token)
    )
    events = response.json()["events"]
    assert [e["action"] for e in events[:3]] == [
        "admin.user.disable",
        "admin.user.enable",
        "admin.user.disable",
    ]
    assert all(e["actor_id"] == str(admin_id) for e in events)
    times = [e["at"] for e in events]
    assert times == sorted(times, reverse=True)
    only = await client.get(
        "/api/admin/audit",
        params={"action": "admin.user.enable", "limit": 1},
        headers=bearer(token),
    )
    assert [e["action"] for e in only.json()["events"]] == ["admin.user.enable"]
    older = await client.get(
        "/api/admin/audit",
        params={"before": only.json()["next_before"], "action": "admin.user.disable"},
        headers=bearer(token),
    )
    assert len(older.json()["events"]) == 1
    for bad in ({"limit": 501}, {"before": "2031-01-01T00:00:00"}, {"actor_id": "x"}):
        refused = await client.get("/api/admin/audit", params=bad, headers=bearer(token))
        assert (refused.status_code, refused.json()["error"]) == (422, "validation_error"), bad


async def test_cookie_admin_requests_from_another_site_are_refused(
    app: FastAPI, client: httpx.AsyncClient
):
    email, password = await make_admin(app)
    victim_email, _, _ = await new_user(client)
    victim = await user_id(app, victim_email)
    client.cookies.clear()
    assert (await sign_in(client, email, password)).status_code == 200
    cross = await client.post(
        f"/api/admin/users/{victim}/disable", headers={"Origin": "https://evil.example"}
    )
    assert (cross.status_code, cross.json()["error"]) == (403, "csrf_rejected")
    same = await client.post(
        f"/api/admin/users/{victim}/disable", headers=await same_origin_csrf(client)
    )
    assert same.status_code == 200


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/auth/sign-up", {"role": "admin"}),
        ("/api/auth/sign-up", {"is_admin": True}),
        ("/api/auth/sign-up", {"email_verified": True}),
        ("/api/auth/sign-in", {"role": "admin"}),
        ("/api/admin/setup", {"token": "x" * 43, "role": "user"}),
    ],
)
async def test_role_and_other_server_side_fields_are_refused_CHK_AC_03(
    app: FastAPI, client: httpx.AsyncClient, path: str, body: dict[str, object]
):
    email = new_email()
    fields = {"email": email, "password": strong_password(), **body}
    response = await client.post(path, json=fields)
    assert (response.status_code, response.json()["error"]) == (422, "validation_error")
    assert await count_rows(app, User, User.email == email) == 0


async def test_password_change_cannot_carry_a_role_CHK_AC_03(
    app: FastAPI, client: httpx.AsyncClient
):
    email, password, token = await new_user(client)
    response = await client.post(
        "/api/auth/password/change",
        json={"current_password": password, "new_password": strong_password(), "role": "admin"},
        headers=bearer(token),
    )
    assert response.status_code == 422
    assert (await client.get("/api/auth/session", headers=bearer(token))).json()["user"][
        "role"
    ] == "user"
    assert (await sign_in(client, email, password)).status_code == 200
