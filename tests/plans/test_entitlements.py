"""`GET /api/entitlements` and `POST /api/entitlements/check`: only an active subscription
grants (seed 004, SPEC §7), limit/used/balance from this month's counter, who may ask about
whom (CHK-AC-02), and failing closed when evaluation breaks (CHK-AC-07)."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from admin_helpers import bearer
from fastapi import FastAPI
from plan_helpers import (
    admin_token,
    create_api_key,
    create_plan,
    signed_in_user,
    stored_user,
    subscribe,
)
from sqlalchemy import text

from authkeep.plans import entitlements
from authkeep.plans.entitlements import charge_quota
from users.identity_helpers import database

NOT_ACTIVE = ("trialing", "past_due", "canceled")


async def check(
    client: httpx.AsyncClient, token: str, feature: str, user_id: uuid.UUID | None = None
) -> httpx.Response:
    body: dict[str, Any] = {"feature": feature}
    if user_id is not None:
        body["user_id"] = str(user_id)
    return await client.post("/api/entitlements/check", json=body, headers=bearer(token))


async def charge(app: FastAPI, user_id: uuid.UUID, feature: str, cost: int, limit: int) -> None:
    async with database(app).session_scope() as db:
        assert (await charge_quota(db, user_id, feature, cost, limit)).allowed


async def test_only_an_active_subscription_grants_features_seed_004(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """Every status but `active` grants nothing: created in it, or changed to it."""
    token = await admin_token(app, client)
    plan = await create_plan(client, token, features=["api"], limits={})
    user_id, user_token = await signed_in_user(app, client)
    subscription = await subscribe(client, token, user_id, plan["id"], status="trialing")
    path = f"/api/admin/subscriptions/{subscription['id']}"
    for status in NOT_ACTIVE:
        await client.patch(path, json={"status": status}, headers=bearer(token))
        mine = (await client.get("/api/entitlements", headers=bearer(user_token))).json()
        assert (mine["plan"], mine["entitlements"]) == (None, []), status
        denied = (await check(client, user_token, "api")).json()
        assert (denied["allowed"], denied["plan"]) == (False, None), status
        await client.patch(path, json={"status": "active"}, headers=bearer(token))
        granted = (await check(client, user_token, "api")).json()
        assert (granted["allowed"], granted["plan"]) == (True, plan["slug"]), status
    for status in NOT_ACTIVE:
        someone = await stored_user(app)
        await subscribe(client, token, someone, plan["id"], status=status)
        answer = (await check(client, token, "api", someone)).json()
        assert (answer["allowed"], answer["plan"]) == (False, None), status


async def test_the_newest_active_subscription_grants_not_a_newer_canceled_one(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    token = await admin_token(app, client)
    basic = await create_plan(client, token, features=["api"], limits={})
    pro = await create_plan(client, token, features=["api", "exports"], limits={})
    user_id, user_token = await signed_in_user(app, client)
    await subscribe(client, token, user_id, basic["id"])
    await subscribe(client, token, user_id, pro["id"], status="canceled")
    answer = (await check(client, user_token, "exports")).json()
    assert (answer["allowed"], answer["plan"]) == (False, basic["slug"])


async def test_limit_used_and_balance_follow_the_monthly_counter(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    token = await admin_token(app, client)
    plan = await create_plan(client, token, features=["api", "exports"], limits={"api": 10})
    user_id, user_token = await signed_in_user(app, client)
    await subscribe(client, token, user_id, plan["id"])
    await charge(app, user_id, "api", 7, 10)

    mine = (await client.get("/api/entitlements", headers=bearer(user_token))).json()
    assert mine["plan"] == plan["slug"]
    assert mine["entitlements"] == [
        {"feature": "api", "limit": 10, "used": 7, "balance": 3},
        {"feature": "exports", "limit": None, "used": 0, "balance": None},
    ]
    assert (await check(client, user_token, "api")).json() == {
        "allowed": True,
        "feature": "api",
        "plan": plan["slug"],
        "limit": 10,
        "used": 7,
        "balance": 3,
        "credits": None,
    }
    unmetered = (await check(client, user_token, "exports")).json()
    assert (unmetered["allowed"], unmetered["limit"], unmetered["balance"]) == (True, None, None)
    missing = (await check(client, user_token, "sso")).json()
    assert (missing["allowed"], missing["limit"], missing["balance"]) == (False, None, 0)

    await charge(app, user_id, "api", 3, 10)
    spent = (await check(client, user_token, "api")).json()
    assert (spent["allowed"], spent["used"], spent["balance"]) == (False, 10, 0)
    # An admin lowering the limit below what was used: balance stays 0, never negative.
    await client.patch(
        f"/api/admin/plans/{plan['id']}", json={"limits": {"api": 4}}, headers=bearer(token)
    )
    lowered = (await check(client, user_token, "api")).json()
    assert (lowered["limit"], lowered["used"], lowered["balance"]) == (4, 10, 0)


async def test_who_may_ask_about_whom_CHK_AC_02(app: FastAPI, client: httpx.AsyncClient) -> None:
    token = await admin_token(app, client)
    plan = await create_plan(client, token, features=["api"], limits={})
    alice, alice_token = await signed_in_user(app, client)
    bob, bob_token = await signed_in_user(app, client)
    await subscribe(client, token, alice, plan["id"])

    assert (await check(client, alice_token, "api", alice)).json()["allowed"] is True
    probe = await check(client, bob_token, "api", alice)
    assert (probe.status_code, probe.json()["error"]) == (403, "forbidden")
    assert "plan" not in probe.json()
    assert (await check(client, token, "api", alice)).json()["allowed"] is True
    assert (await check(client, token, "api", bob)).json()["allowed"] is False
    nobody = await check(client, token, "api", uuid.uuid4())
    assert (nobody.status_code, nobody.json()["error"]) == (404, "unknown_user")
    anonymous = await client.post("/api/entitlements/check", json={"feature": "api"})
    assert (anonymous.status_code, anonymous.json()["error"]) == (401, "unauthorized")
    assert (await client.get("/api/entitlements")).status_code == 401
    extra = await client.post(
        "/api/entitlements/check",
        json={"feature": "api", "plan": "enterprise"},
        headers=bearer(alice_token),
    )
    assert extra.status_code == 422  # CHK-AC-03

    await client.post(f"/api/admin/users/{alice}/disable", headers=bearer(token))
    disabled = (await check(client, token, "api", alice)).json()
    assert (disabled["allowed"], disabled["plan"]) == (False, plan["slug"])


async def ask_everything(client: httpx.AsyncClient, token: str, admin: str) -> list[int]:
    statuses = []
    for _ in range(5):
        for who, feature in ((token, "api"), (token, "exports"), (admin, "api")):
            answer = await check(client, who, feature)
            assert answer.json()["error"] == "entitlements_unavailable", answer.text
            statuses.append(answer.status_code)
        mine = await client.get("/api/entitlements", headers=bearer(token))
        statuses.append(mine.status_code)
    return statuses


async def test_fails_closed_when_the_store_raises_CHK_AC_07(
    app: FastAPI, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception in the entitlement or quota store: 503, no 2xx at all."""
    token = await admin_token(app, client)
    plan = await create_plan(client, token)
    user_id, user_token = await signed_in_user(app, client)
    await subscribe(client, token, user_id, plan["id"])
    assert (await check(client, user_token, "api")).json()["allowed"] is True

    async def broken(*args: object, **kwargs: object) -> object:
        raise RuntimeError("injected store failure")

    statuses: list[int] = []
    for store in ("grant_for", "quota_used"):
        with monkeypatch.context() as patch:
            patch.setattr(entitlements, store, broken)
            statuses += await ask_everything(client, user_token, token)
    assert statuses == [503] * len(statuses)
    assert sum(200 <= s < 300 for s in statuses) == 0
    assert (await check(client, user_token, "api")).json()["allowed"] is True


async def test_fails_closed_when_the_subscriptions_table_is_gone_CHK_AC_07(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    token = await admin_token(app, client)
    plan = await create_plan(client, token)
    user_id, user_token = await signed_in_user(app, client)
    await subscribe(client, token, user_id, plan["id"])
    async with database(app).session_scope() as db:
        await db.execute(text("ALTER TABLE subscriptions RENAME TO subscriptions_away"))
    try:
        statuses = await ask_everything(client, user_token, token)
    finally:
        async with database(app).session_scope() as db:
            await db.execute(text("ALTER TABLE subscriptions_away RENAME TO subscriptions"))
    assert statuses == [503] * len(statuses)
    assert (await check(client, user_token, "api")).json()["allowed"] is True


async def key_check(
    client: httpx.AsyncClient, key: str, body: dict[str, Any], *, header: str = "X-API-Key"
) -> httpx.Response:
    value = key if header == "X-API-Key" else f"Bearer {key}"
    return await client.post("/api/entitlements/check", json=body, headers={header: value})


async def test_an_api_key_asks_about_its_owner_with_credits(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    token = await admin_token(app, client)
    plan = await create_plan(client, token, features=["api"], limits={"api": 10})
    owner, owner_token = await signed_in_user(app, client)
    other, _ = await signed_in_user(app, client)
    await subscribe(client, token, owner, plan["id"])
    await charge(app, owner, "api", 4, 10)
    unlimited = (await create_api_key(client, owner_token))["key"]
    metered = (await create_api_key(client, owner_token, credits=5))["key"]
    spent = (await create_api_key(client, owner_token, credits=0))["key"]

    assert (await key_check(client, unlimited, {"feature": "api"})).json() == {
        "allowed": True,
        "feature": "api",
        "plan": plan["slug"],
        "limit": 10,
        "used": 4,
        "balance": 6,
        "credits": None,
    }
    as_bearer = await key_check(client, metered, {"feature": "api"}, header="Authorization")
    assert (as_bearer.json()["allowed"], as_bearer.json()["credits"]) == (True, 5)
    about_self = await key_check(client, metered, {"feature": "api", "user_id": str(owner)})
    assert about_self.json()["allowed"] is True
    none_left = (await key_check(client, spent, {"feature": "api"})).json()
    assert (none_left["allowed"], none_left["credits"], none_left["balance"]) == (False, 0, 6)

    probe = await key_check(client, unlimited, {"feature": "api", "user_id": str(other)})
    assert (probe.status_code, probe.json()["error"]) == (403, "forbidden")
    forged = await key_check(client, unlimited[:-2] + "zz", {"feature": "api"})
    assert forged.status_code == 401


async def test_a_key_never_carries_its_owners_admin_role_CHK_AC_02(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    token = await admin_token(app, client)
    other, _ = await signed_in_user(app, client)
    admin_key = (await create_api_key(client, token))["key"]
    probe = await key_check(client, admin_key, {"feature": "api", "user_id": str(other)})
    assert (probe.status_code, probe.json()["error"]) == (403, "forbidden")
    assert (await check(client, token, "api", other)).status_code == 200


async def test_a_key_check_fails_closed_too_CHK_AC_07(
    app: FastAPI, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = await admin_token(app, client)
    plan = await create_plan(client, token)
    owner, owner_token = await signed_in_user(app, client)
    await subscribe(client, token, owner, plan["id"])
    key = (await create_api_key(client, owner_token, credits=3))["key"]

    async def broken(*args: object, **kwargs: object) -> object:
        raise RuntimeError("injected store failure")

    statuses = []
    for store in ("grant_for", "quota_used"):
        with monkeypatch.context() as patch:
            patch.setattr(entitlements, store, broken)
            for _ in range(5):
                answer = await key_check(client, key, {"feature": "api"})
                assert answer.json()["error"] == "entitlements_unavailable"
                statuses.append(answer.status_code)
    assert statuses == [503] * 10
    assert (await key_check(client, key, {"feature": "api"})).json()["allowed"] is True
