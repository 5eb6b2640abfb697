"""`/api/admin/plans` and subscriptions: who may call (CHK-AC-01, CHK-AC-06), what is refused
(409 `plan_exists`, 422 limits for features the plan lacks, 409 deleting a plan in use,
CHK-AC-03 unknown fields), one audit row per action (CHK-LG-01), and the verify cache dropping
the users a change affects (CHK-AC-04)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx
import time_machine
from admin_helpers import bearer
from fastapi import FastAPI
from plan_helpers import (
    admin_token,
    create_plan,
    signed_in_user,
    stored_user,
    subscribe,
)

from authkeep.keys.cache import key_cache_for
from users.identity_helpers import audit_rows, client_for

START = datetime(2031, 6, 1, 9, 0, tzinfo=UTC)
PLAN_ROUTES = {
    ("POST", "/api/admin/plans"),
    ("GET", "/api/admin/plans"),
    ("GET", "/api/admin/plans/{plan_id}"),
    ("PATCH", "/api/admin/plans/{plan_id}"),
    ("DELETE", "/api/admin/plans/{plan_id}"),
    ("POST", "/api/admin/users/{user_id}/subscriptions"),
    ("GET", "/api/admin/users/{user_id}/subscriptions"),
    ("PATCH", "/api/admin/subscriptions/{subscription_id}"),
}
ACTIONS = sorted(route for route in PLAN_ROUTES if route[0] != "GET")


def plan_routes_served(app: FastAPI) -> set[tuple[str, str]]:
    paths = app.openapi()["paths"]
    return {
        (method.upper(), path)
        for path, operations in paths.items()
        for method, operation in operations.items()
        if path.startswith("/api/admin") and "plans" in operation.get("tags", [])
    }


async def call(
    client: httpx.AsyncClient,
    route: tuple[str, str],
    ids: dict[str, str],
    token: str | None,
) -> httpx.Response:
    method, path = route
    bodies = {
        ("POST", "/api/admin/plans"): {"slug": f"p-{uuid.uuid4().hex[:8]}", "name": "P"},
        ("PATCH", "/api/admin/plans/{plan_id}"): {"name": "Renamed"},
        ("POST", "/api/admin/users/{user_id}/subscriptions"): {"plan_id": ids["spare_plan"]},
        ("PATCH", "/api/admin/subscriptions/{subscription_id}"): {"seats": 3},
    }
    return await client.request(
        method,
        path.format(**ids),
        json=bodies.get(route),
        headers=bearer(token) if token else {},
    )


async def fixtures_for_matrix(
    app: FastAPI, client: httpx.AsyncClient, token: str
) -> dict[str, str]:
    user_id = await stored_user(app)
    spare = await create_plan(client, token)
    doomed = await create_plan(client, token)
    subscription = await subscribe(client, token, user_id, spare["id"])
    return {
        "plan_id": doomed["id"],
        "spare_plan": spare["id"],
        "user_id": str(user_id),
        "subscription_id": subscription["id"],
    }


def test_the_matrix_covers_every_plan_admin_route(app: FastAPI) -> None:
    assert plan_routes_served(app) == PLAN_ROUTES


async def test_anonymous_401_user_403_admin_2xx_CHK_AC_01(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    token = await admin_token(app, client)
    _, user_token = await signed_in_user(app, client)
    ids = await fixtures_for_matrix(app, client, token)
    for route in sorted(PLAN_ROUTES, key=lambda r: (r[0] == "DELETE", r)):
        anonymous = await call(client, route, ids, None)
        assert (anonymous.status_code, anonymous.json()["error"]) == (401, "unauthorized"), route
        as_user = await call(client, route, ids, user_token)
        assert (as_user.status_code, as_user.json()["error"]) == (403, "forbidden"), route
        as_admin = await call(client, route, ids, token)
        assert as_admin.status_code in (200, 201, 204), (route, as_admin.text)
        assert as_admin.headers["cache-control"] == "no-store"
    denied = await audit_rows(app, "admin.access")
    assert len(denied) == len(PLAN_ROUTES)


async def test_actions_need_a_fresh_session_reads_do_not_CHK_AC_06(app: FastAPI) -> None:
    with time_machine.travel(START, tick=False) as traveller:
        async with client_for(app) as client:
            token = await admin_token(app, client)
            ids = await fixtures_for_matrix(app, client, token)
            traveller.shift(timedelta(minutes=11))  # past fresh (10), within idle (30)
            for route in ACTIONS:
                response = await call(client, route, ids, token)
                assert (response.status_code, response.json()["error"]) == (
                    403,
                    "reauth_required",
                ), route
            for route in sorted(r for r in PLAN_ROUTES if r[0] == "GET"):
                assert (await call(client, route, ids, token)).status_code == 200, route
    denied = await audit_rows(app, "admin.access")
    assert [e.detail["reason"] for e in denied if e.detail] == ["reauth_required"] * len(ACTIONS)


async def test_plan_lifecycle_with_refusals_and_one_audit_row_per_action_CHK_LG_01(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    token = await admin_token(app, client)
    auth = bearer(token)
    plan = await create_plan(client, token, slug="team", features=["api", "sso"])
    assert (plan["slug"], plan["features"], plan["limits"]) == (
        "team",
        ["api", "sso"],
        {"api": 100},
    )

    again = await client.post("/api/admin/plans", json={"slug": "team", "name": "x"}, headers=auth)
    assert (again.status_code, again.json()["error"]) == (409, "plan_exists")
    stray = await client.post(
        "/api/admin/plans",
        json={"slug": "stray", "name": "x", "features": ["api"], "limits": {"exports": 5}},
        headers=auth,
    )
    assert (stray.status_code, stray.json()["error"]) == (422, "limit_without_feature")
    negative = await client.post(
        "/api/admin/plans",
        json={"slug": "neg", "name": "x", "features": ["api"], "limits": {"api": -1}},
        headers=auth,
    )
    assert (negative.status_code, negative.json()["error"]) == (422, "validation_error")
    extra = await client.post(
        "/api/admin/plans", json={"slug": "extra", "name": "x", "owner": "me"}, headers=auth
    )
    assert (extra.status_code, extra.json()["error"]) == (422, "validation_error")

    path = f"/api/admin/plans/{plan['id']}"
    renamed = await client.patch(path, json={"name": "Team", "limits": {"sso": 3}}, headers=auth)
    assert renamed.status_code == 200, renamed.text
    assert (renamed.json()["name"], renamed.json()["limits"]) == ("Team", {"sso": 3})
    dropped = await client.patch(path, json={"features": ["api"]}, headers=auth)
    assert (dropped.status_code, dropped.json()["error"]) == (422, "limit_without_feature")
    other = await create_plan(client, token, slug="solo")
    clash = await client.patch(path, json={"slug": "solo"}, headers=auth)
    assert (clash.status_code, clash.json()["error"]) == (409, "plan_exists")

    listed = (await client.get("/api/admin/plans", headers=auth)).json()["plans"]
    assert [p["slug"] for p in listed] == ["solo", "team"]
    assert (await client.get(path, headers=auth)).json()["name"] == "Team"

    user_id = await stored_user(app)
    subscription = await subscribe(client, token, user_id, plan["id"], status="canceled")
    in_use = await client.delete(path, headers=auth)
    assert (in_use.status_code, in_use.json()["error"]) == (409, "plan_in_use")
    moved = await client.patch(
        f"/api/admin/subscriptions/{subscription['id']}",
        json={"plan_id": other["id"]},
        headers=auth,
    )
    assert moved.json()["plan"] == "solo"
    assert (await client.delete(path, headers=auth)).status_code == 204
    gone = await client.get(path, headers=auth)
    assert (gone.status_code, gone.json()["error"]) == (404, "unknown_plan")

    expected = {
        "admin.plan.create": 2,
        "admin.plan.update": 1,
        "admin.plan.delete": 1,
        "admin.subscription.create": 1,
        "admin.subscription.update": 1,
    }
    for action, count in expected.items():
        rows = await audit_rows(app, action)
        assert len(rows) == count, action
        assert {row.outcome for row in rows} == {"success"}
        assert all(row.actor_id is not None for row in rows)
    (deleted,) = await audit_rows(app, "admin.plan.delete")
    assert (deleted.target, deleted.detail) == (plan["id"], {"slug": "team"})


async def test_subscriptions_create_update_list(app: FastAPI, client: httpx.AsyncClient) -> None:
    token = await admin_token(app, client)
    auth = bearer(token)
    plan = await create_plan(client, token)
    user_id = await stored_user(app)
    first = await subscribe(client, token, user_id, plan["id"], status="trialing")
    assert (first["status"], first["seats"], first["plan"]) == ("trialing", 1, plan["slug"])
    end = "2031-07-01T00:00:00Z"
    changed = await client.patch(
        f"/api/admin/subscriptions/{first['id']}",
        json={"status": "active", "seats": 5, "current_period_end": end},
        headers=auth,
    )
    assert changed.status_code == 200, changed.text
    body = changed.json()
    assert (body["status"], body["seats"]) == ("active", 5)
    assert datetime.fromisoformat(body["current_period_end"]) == datetime(2031, 7, 1, tzinfo=UTC)
    cleared = await client.patch(
        f"/api/admin/subscriptions/{first['id']}", json={"current_period_end": None}, headers=auth
    )
    assert (cleared.json()["current_period_end"], cleared.json()["seats"]) == (None, 5)
    second = await subscribe(client, token, user_id, plan["id"], status="past_due")
    listed = await client.get(f"/api/admin/users/{user_id}/subscriptions", headers=auth)
    assert [s["id"] for s in listed.json()["subscriptions"]] == [second["id"], first["id"]]

    bad_status = await client.patch(
        f"/api/admin/subscriptions/{first['id']}", json={"status": "paused"}, headers=auth
    )
    assert (bad_status.status_code, bad_status.json()["error"]) == (422, "validation_error")
    no_seats = await client.patch(
        f"/api/admin/subscriptions/{first['id']}", json={"seats": 0}, headers=auth
    )
    assert no_seats.status_code == 422
    naive = await client.patch(
        f"/api/admin/subscriptions/{first['id']}",
        json={"current_period_end": "2031-07-01T00:00:00"},
        headers=auth,
    )
    assert naive.status_code == 422
    nobody = uuid.uuid4()
    unknown_user = await client.post(
        f"/api/admin/users/{nobody}/subscriptions", json={"plan_id": plan["id"]}, headers=auth
    )
    assert (unknown_user.status_code, unknown_user.json()["error"]) == (404, "unknown_user")
    unknown_plan = await client.post(
        f"/api/admin/users/{user_id}/subscriptions", json={"plan_id": str(nobody)}, headers=auth
    )
    assert (unknown_plan.status_code, unknown_plan.json()["error"]) == (404, "unknown_plan")
    unknown_sub = await client.patch(
        f"/api/admin/subscriptions/{nobody}", json={"seats": 2}, headers=auth
    )
    assert (unknown_sub.status_code, unknown_sub.json()["error"]) == (404, "unknown_subscription")
    owner = await client.post(
        f"/api/admin/users/{user_id}/subscriptions",
        json={"plan_id": plan["id"], "user_id": str(nobody)},
        headers=auth,
    )
    assert owner.status_code == 422  # CHK-AC-03: the owner comes from the path only


async def test_changes_drop_the_affected_users_from_the_verify_cache_CHK_AC_04(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """A plan edit drops every subscriber's cached verifications; a subscription change drops
    its user's; bystanders keep theirs."""
    token = await admin_token(app, client)
    auth = bearer(token)
    plan = await create_plan(client, token)
    subscriber, lapsed, bystander = [await stored_user(app) for _ in range(3)]
    subscription = await subscribe(client, token, subscriber, plan["id"])
    await subscribe(client, token, lapsed, plan["id"], status="canceled")
    cache = key_cache_for(app)

    def fill() -> None:
        cache.clear()
        for user_id in (subscriber, lapsed, bystander):
            cache.put(f"digest-{user_id}", uuid.uuid4(), user_id, "cached")

    def cached() -> set[uuid.UUID]:
        return {u for u in (subscriber, lapsed, bystander) if cache.get(f"digest-{u}")}

    fill()
    await client.patch(f"/api/admin/plans/{plan['id']}", json={"limits": {}}, headers=auth)
    assert cached() == {bystander}
    fill()
    await client.patch(
        f"/api/admin/subscriptions/{subscription['id']}", json={"status": "past_due"}, headers=auth
    )
    assert cached() == {lapsed, bystander}
    fill()
    await subscribe(client, token, bystander, plan["id"])
    assert cached() == {subscriber, lapsed}
