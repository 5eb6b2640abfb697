"""Who may touch a key: only its owner, or an admin on the owner's behalf (CHK-AC-02,
CHK-AC-03, CHK-AK-03, Better Auth CVE-2025-61928). Admin key actions follow the admin API's
rules (CHK-AC-01, CHK-AC-06: fresh session, one audit row each). A deleted account's keys are
revoked, and disabling or enabling a user reaches the verify cache at once (CHK-AK-04)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import time_machine
from fastapi import FastAPI
from key_helpers import (
    KEYS,
    admin_keys,
    cached,
    create_key,
    key_row,
    key_rows,
    prime_cache,
    register_key,
    row_state,
    user_id_of,
)

from admin.admin_helpers import signed_in_admin
from authkeep.keys.models import ApiKey
from users.identity_helpers import (
    audit_rows,
    bearer,
    client_for,
    count_rows,
    new_user,
    same_origin_csrf,
)

START = datetime(2031, 6, 1, 9, 0, tzinfo=UTC)
KEY_ROUTES = {
    "/api/keys": {"get", "post"},
    "/api/keys/{key_id}": {"get", "patch", "delete"},
    "/api/keys/{key_id}/revoke": {"post"},
    "/api/keys/{key_id}/reroll": {"post"},
    "/api/admin/users/{user_id}/keys": {"get", "post"},
    "/api/admin/users/{user_id}/keys/{key_id}": {"get", "patch", "delete"},
    "/api/admin/users/{user_id}/keys/{key_id}/revoke": {"post"},
    "/api/admin/users/{user_id}/keys/{key_id}/reroll": {"post"},
}
# (method, path under the key, body) of every route that acts on one key.
KEY_ACTIONS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "", None),
    ("PATCH", "", {"name": "taken over", "permissions": ["admin"]}),
    ("POST", "/revoke", None),
    ("POST", "/reroll", {"grace_seconds": 0}),
    ("DELETE", "", None),
]


async def signed_in(client: httpx.AsyncClient, app: FastAPI) -> tuple[str, uuid.UUID]:
    email, _, token = await new_user(client)
    return token, await user_id_of(app, email)


async def act(
    client: httpx.AsyncClient,
    base: str,
    key_id: str,
    action: tuple[str, str, dict[str, Any] | None],
    token: str | None,
) -> httpx.Response:
    method, suffix, body = action
    headers = bearer(token) if token else {}
    if body is None:
        return await client.request(method, f"{base}/{key_id}{suffix}", headers=headers)
    return await client.request(method, f"{base}/{key_id}{suffix}", headers=headers, json=body)


async def test_anonymous_create_naming_a_victim_is_401_and_creates_nothing_CVE_2025_61928(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """CHK-AK-03: unauthenticated create with the victim's user_id → 401, no key."""
    _, victim = await signed_in(client, app)
    client.cookies.clear()
    for owner_field in ("user_id", "userId", "owner"):
        body = {"name": "mine now", owner_field: str(victim)}
        response = await client.post(KEYS, json=body)
        assert (response.status_code, response.json()["error"]) == (401, "unauthorized")
        assert "key" not in response.json()
        admin_route = await client.post(admin_keys(victim), json=body)
        assert (admin_route.status_code, admin_route.json()["error"]) == (401, "unauthorized")
    assert await count_rows(app, ApiKey) == 0


SERVER_FIELDS: list[dict[str, Any]] = [
    {"user_id": "victim"},
    {"owner": "victim"},
    {"userId": "victim"},
    {"key": "ak_chosen"},
    {"key_hash": "0" * 64},
    {"id": "victim"},
    {"revoked_at": None},
    {"version": 99},
]


async def test_a_user_cannot_set_the_owner_or_server_fields_CHK_AC_03(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """A body `user_id`/`owner` (or any server-decided field) from a non-admin → 422 and
    nothing is created or changed for anyone (CHK-AK-03)."""
    _, victim = await signed_in(client, app)
    token, attacker = await signed_in(client, app)
    for extra in SERVER_FIELDS:
        fields = {k: str(victim) if v == "victim" else v for k, v in extra.items()}
        response = await client.post(KEYS, json={"name": "k", **fields}, headers=bearer(token))
        assert (response.status_code, response.json()["error"]) == (422, "validation_error")
    assert await count_rows(app, ApiKey) == 0
    created = await create_key(client, token)
    for extra in SERVER_FIELDS:
        fields = {k: str(victim) if v == "victim" else v for k, v in extra.items()}
        url = f"{KEYS}/{created['id']}"
        update = await client.patch(url, json=fields, headers=bearer(token))
        assert (update.status_code, update.json()["error"]) == (422, "validation_error"), extra
    row = await key_row(app, created["id"])
    assert row is not None
    assert (row.user_id, row.version) == (attacker, 1)
    assert await key_rows(app, victim) == []


async def test_a_user_cannot_see_or_touch_another_users_key_CHK_AC_02(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """User A on B's key id: the same 404 as a key that does not exist, for every route;
    B's key row is unchanged and its verify-cache entry stays."""
    b_token, b_id = await signed_in(client, app)
    b_key = await create_key(client, b_token, permissions=["read"], metadata={"b": 1})
    a_token, _ = await signed_in(client, app)
    a_key = await create_key(client, a_token)
    before = row_state(await key_row(app, b_key["id"]))
    entry = prime_cache(app, b_key["id"], b_id)

    for action in KEY_ACTIONS:
        theirs = await act(client, KEYS, b_key["id"], action, a_token)
        missing = await act(client, KEYS, str(uuid.uuid4()), action, a_token)
        assert (theirs.status_code, theirs.json()["error"]) == (404, "key_not_found"), action
        assert theirs.json() == missing.json()
        assert b_key["key"] not in theirs.text

    assert row_state(await key_row(app, b_key["id"])) == before
    assert [k.id for k in await key_rows(app, b_id)] == [uuid.UUID(b_key["id"])]
    assert cached(app, entry)
    listed = (await client.get(KEYS, headers=bearer(a_token))).json()
    assert [k["id"] for k in listed["keys"]] == [a_key["id"]]
    paged = await client.get(KEYS, params={"after": b_key["id"]}, headers=bearer(a_token))
    assert paged.json()["keys"] == []

    as_admin_route = await client.post(
        admin_keys(b_id), json={"name": "for b"}, headers=bearer(a_token)
    )
    assert (as_admin_route.status_code, as_admin_route.json()["error"]) == (403, "forbidden")
    assert len(await key_rows(app, b_id)) == 1


async def test_cookie_requests_from_another_site_are_refused(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    await new_user(client)  # leaves the session cookie in the client
    cross_site = await client.post(
        KEYS, json={"name": "csrf"}, headers={"Sec-Fetch-Site": "cross-site"}
    )
    assert (cross_site.status_code, cross_site.json()["error"]) == (403, "csrf_rejected")
    assert await count_rows(app, ApiKey) == 0
    same_site = await client.post(
        KEYS, json={"name": "mine"}, headers=await same_origin_csrf(client)
    )
    register_key(same_site)


async def test_every_key_route_needs_a_session_CHK_AC_01(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    paths = app.openapi()["paths"]
    checked = 0
    for path, methods in KEY_ROUTES.items():
        assert methods <= set(paths[path]), path
        for method in methods:
            url = path.format(key_id=uuid.uuid4(), user_id=uuid.uuid4())
            response = await client.request(method.upper(), url, json={"name": "x"})
            assert (response.status_code, response.json()["error"]) == (401, "unauthorized"), (
                method,
                path,
            )
            checked += 1
    assert checked == 14


async def test_admin_manages_a_users_keys_with_one_audit_row_each_CHK_AC_06(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    user_email, _, user_token = await new_user(client)
    user_id = await user_id_of(app, user_email)
    admin_email, _, admin_token = await signed_in_admin(app, client)
    admin_id = await user_id_of(app, admin_email)
    base = admin_keys(user_id)
    as_admin = bearer(admin_token)

    created = register_key(
        await client.post(base, json={"name": "on behalf", "credits": 5}, headers=as_admin)
    )
    assert (created["user_id"], created["owner"]) == (str(user_id), str(user_id))
    rerolled_from = register_key(
        await client.post(base, json={"name": "to reroll"}, headers=as_admin)
    )
    own_list = (await client.get(KEYS, headers=bearer(user_token))).json()["keys"]
    assert {k["id"] for k in own_list} == {created["id"], rerolled_from["id"]}
    assert await key_rows(app, admin_id) == []

    listed = await client.get(base, headers=as_admin)
    assert {k["id"] for k in listed.json()["keys"]} == {created["id"], rerolled_from["id"]}
    read = await client.get(f"{base}/{created['id']}", headers=as_admin)
    assert read.status_code == 200
    assert created["key"] not in read.text
    updated = await client.patch(f"{base}/{created['id']}", json={"credits": 9}, headers=as_admin)
    assert updated.json()["credits"] == 9
    revoked = await client.post(f"{base}/{created['id']}/revoke", headers=as_admin)
    assert revoked.json()["revoked_at"] is not None
    new = register_key(
        await client.post(
            f"{base}/{rerolled_from['id']}/reroll", json={"grace_seconds": 30}, headers=as_admin
        )
    )
    assert (new["user_id"], new["name"]) == (str(user_id), "to reroll")
    deleted = await client.delete(f"{base}/{created['id']}", headers=as_admin)
    assert deleted.status_code == 204
    assert await key_row(app, created["id"]) is None

    expected = {
        "admin.key.create": 2,
        "admin.key.update": 1,
        "admin.key.revoke": 1,
        "admin.key.reroll": 1,
        "admin.key.delete": 1,
    }
    for action, count in expected.items():
        rows = await audit_rows(app, action)
        assert len(rows) == count, action
        for row in rows:
            assert (row.actor_id, row.actor, row.target) == (admin_id, admin_email, str(user_id))
            assert row.detail is not None
            assert row.detail["key_id"] in {created["id"], rerolled_from["id"], new["id"]}
    reroll_row = (await audit_rows(app, "admin.key.reroll"))[0]
    assert reroll_row.detail is not None
    assert reroll_row.detail["new_key_id"] == new["id"]
    # The user's own key actions are audited under their own names, not as admin actions.
    assert len(await audit_rows(app, "key.create")) == 0


async def test_admin_routes_scope_keys_to_the_user_in_the_path(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    a_email, _, a_token = await new_user(client)
    b_email, _, _ = await new_user(client)
    a_id, b_id = await user_id_of(app, a_email), await user_id_of(app, b_email)
    a_key = await create_key(client, a_token)
    _, _, admin_token = await signed_in_admin(app, client)
    before = row_state(await key_row(app, a_key["id"]))
    for action in KEY_ACTIONS:
        wrong_user = await act(client, admin_keys(b_id), a_key["id"], action, admin_token)
        assert (wrong_user.status_code, wrong_user.json()["error"]) == (404, "key_not_found")
        unknown = await act(client, admin_keys(uuid.uuid4()), a_key["id"], action, admin_token)
        assert (unknown.status_code, unknown.json()["error"]) == (404, "unknown_user")
    assert row_state(await key_row(app, a_key["id"])) == before
    assert await key_rows(app, b_id) == []
    assert [k.id for k in await key_rows(app, a_id)] == [uuid.UUID(a_key["id"])]


async def test_admin_key_routes_anonymous_401_user_403_stale_admin_403(app: FastAPI) -> None:
    """CHK-AC-01 and CHK-AC-06: changes need a fresh admin session; reads do not."""
    with time_machine.travel(START, tick=False) as traveller:
        async with client_for(app) as client:
            owner_email, _, user_token = await new_user(client)
            owner = await user_id_of(app, owner_email)
            key = await create_key(client, user_token)
            _, _, admin_token = await signed_in_admin(app, client)
            base = admin_keys(owner)
            routes: list[tuple[str, str, dict[str, Any] | None]] = [
                ("POST", base, {"name": "x"}),
                ("GET", base, None),
                *[(m, f"{base}/{key['id']}{s}", b) for m, s, b in KEY_ACTIONS],
            ]
            for method, url, body in routes:
                kwargs: dict[str, Any] = {"json": body} if body is not None else {}
                anonymous = await client.request(method, url, **kwargs)
                assert anonymous.status_code == 401, (method, url)
                as_user = await client.request(method, url, headers=bearer(user_token), **kwargs)
                assert (as_user.status_code, as_user.json()["error"]) == (403, "forbidden")
            traveller.shift(timedelta(minutes=11))  # past fresh (10), within idle (30)
            for method, url, body in routes:
                kwargs = {"json": body} if body is not None else {}
                stale = await client.request(method, url, headers=bearer(admin_token), **kwargs)
                if method == "GET":
                    assert stale.status_code == 200, (url, stale.text)
                else:
                    assert (stale.status_code, stale.json()["error"]) == (403, "reauth_required")
    denied = await audit_rows(app, "admin.access")
    assert len(denied) == len(routes) + sum(1 for m, _, _ in routes if m != "GET")
    row = await key_row(app, key["id"])
    assert row is not None
    assert (row.name, row.revoked_at, row.replaced_by, row.version) == ("test key", None, None, 1)
    assert len(await key_rows(app, owner)) == 1


async def test_deleting_an_account_revokes_its_keys(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    email, password, token = await new_user(client)
    user_id = await user_id_of(app, email)
    live = [await create_key(client, token) for _ in range(2)]
    earlier = await create_key(client, token)
    revoked_at = (
        await client.post(f"{KEYS}/{earlier['id']}/revoke", headers=bearer(token))
    ).json()["revoked_at"]
    entries = [prime_cache(app, key["id"], user_id) for key in (*live, earlier)]

    deleted = await client.post(
        "/api/auth/account/delete", json={"password": password}, headers=bearer(token)
    )
    assert deleted.status_code == 204
    rows = {str(row.id): row for row in await key_rows(app, user_id)}
    assert len(rows) == 3
    assert all(row.revoked_at is not None for row in rows.values())
    assert all(rows[key["id"]].version == 2 for key in live)
    assert rows[earlier["id"]].revoked_at == datetime.fromisoformat(revoked_at)
    assert not any(cached(app, entry) for entry in entries)
    attempt = (await audit_rows(app, "auth.account_delete"))[-1]
    assert attempt.detail is not None
    assert attempt.detail["keys_revoked"] == 2


async def test_disabling_or_enabling_a_user_drops_their_keys_from_the_verify_cache(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    email, _, token = await new_user(client)
    user_id = await user_id_of(app, email)
    key = await create_key(client, token)
    other_email, _, other_token = await new_user(client)
    other_key = await create_key(client, other_token)
    other_entry = prime_cache(app, other_key["id"], await user_id_of(app, other_email))
    _, _, admin_token = await signed_in_admin(app, client)
    for action in ("disable", "enable"):
        entry = prime_cache(app, key["id"], user_id)
        response = await client.post(
            f"/api/admin/users/{user_id}/{action}", headers=bearer(admin_token)
        )
        assert response.status_code == 200, response.text
        assert not cached(app, entry), action
    assert cached(app, other_entry)
