"""`/api/keys` for the signed-in user's own keys: create shows the key once and stores only its
keyed hash (CHK-AK-01), update changes only the fields sent, revoke / reroll / delete, their
verify-cache invalidation, validation with stable codes, keys never in URLs (CHK-AK-02), and
the routes in the OpenAPI document."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from key_helpers import (
    KEYS,
    cached,
    create_key,
    every_stored_value,
    key_row,
    key_rows,
    prime_cache,
    reroll_key,
    row_state,
    user_id_of,
)

from authkeep.keys import service as keys_service
from authkeep.keys.format import display_start, key_digest, parse_key
from support.secrets_scan import FIGURES, SCAN
from users.identity_helpers import bearer, new_user

FULL_SETTINGS: dict[str, Any] = {
    "name": "billing worker",
    "prefix": "bill",
    "permissions": ["invoices.read", "invoices.write"],
    "metadata": {"team": "billing", "tier": 2, "tags": ["a", "b"]},
    "rate_limits": [
        {"name": "requests", "limit": 100, "window_seconds": 60},
        {"name": "tokens", "limit": 5000, "window_seconds": 3600},
    ],
    "credits": 250,
    "refill": {"amount": 1000, "interval": "month"},
    "external_id": "customer-42",
}
# Fields a reroll copies to the new key.
SETTINGS_FIELDS = (
    "name",
    "prefix",
    "permissions",
    "metadata",
    "rate_limits",
    "credits",
    "refill",
    "external_id",
    "owner",
    "user_id",
    "enabled",
)


def in_days(days: float) -> datetime:
    return datetime.now(UTC) + timedelta(days=days)


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def signed_in(client: httpx.AsyncClient, app: FastAPI) -> tuple[str, uuid.UUID]:
    email, _, token = await new_user(client)
    return token, await user_id_of(app, email)


async def test_create_answers_the_key_once_and_stores_only_its_hash_CHK_AK_01(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    token, user_id = await signed_in(client, app)
    response = await client.post(KEYS, json={"name": "ci deploy"}, headers=bearer(token))
    assert response.headers["Cache-Control"] == "no-store"
    created = response.json()
    key = SCAN.register(created["key"])
    assert response.status_code == 201
    parsed = parse_key(key)
    assert parsed is not None
    assert parsed.prefix == created["prefix"] == app.state.settings.key_prefix
    assert created["start"] == display_start(key)
    assert (created["user_id"], created["owner"]) == (str(user_id), str(user_id))
    assert created["revoked_at"] is None
    assert created["expires_at"] is None

    row = await key_row(app, created["id"])
    assert row is not None
    secret = app.state.settings.secret_key.get_secret_value()
    assert row.key_hash == key_digest(secret, key)
    assert key not in json.dumps(row_state(row), default=str)

    listed = await client.get(KEYS, headers=bearer(token))
    read = await client.get(f"{KEYS}/{created['id']}", headers=bearer(token))
    for answer in (listed, read):
        assert answer.status_code == 200
        assert key not in answer.text
        assert row.key_hash not in answer.text
        assert answer.headers["Cache-Control"] == "no-store"
    assert [k["id"] for k in listed.json()["keys"]] == [created["id"]]
    assert "key" not in read.json()
    assert "key_hash" not in read.json()
    assert read.json() == {k: v for k, v in created.items() if k != "key"}


async def test_every_setting_is_stored_and_echoed(app: FastAPI, client: httpx.AsyncClient) -> None:
    token, user_id = await signed_in(client, app)
    expiry = in_days(30).isoformat()
    created = await create_key(client, token, **FULL_SETTINGS, expires_at=expiry)
    assert created["key"].startswith("bill_")
    for field in ("name", "prefix", "permissions", "metadata", "rate_limits", "refill"):
        assert created[field] == FULL_SETTINGS[field], field
    assert created["credits"] == 250
    assert (created["external_id"], created["owner"]) == ("customer-42", "customer-42")
    assert parse_time(created["expires_at"]) == parse_time(expiry)
    row = await key_row(app, created["id"])
    assert row is not None
    assert (row.user_id, row.credits_remaining, row.refill_amount) == (user_id, 250, 1000)
    assert row.refilled_at is not None
    assert row.meta == FULL_SETTINGS["metadata"]


async def test_no_issued_key_is_stored_or_echoed_anywhere_CHK_AK_01(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """DB scan: every value of every column of every table holds no issued key, nor the
    secret part of one; no answer but create and reroll carries one."""
    token, _ = await signed_in(client, app)
    issued: list[str] = []
    others: list[httpx.Response] = []
    first = await create_key(client, token, **FULL_SETTINGS)
    second = await create_key(client, token, name="plain")
    issued += [first["key"], second["key"]]
    rerolled = await reroll_key(client, token, first["id"], grace_seconds=600)
    issued.append(rerolled.json()["key"])
    others.append(
        await client.patch(
            f"{KEYS}/{second['id']}", json={"metadata": {"x": 1}}, headers=bearer(token)
        )
    )
    others.append(await client.post(f"{KEYS}/{second['id']}/revoke", headers=bearer(token)))
    others.append(await client.get(KEYS, headers=bearer(token)))
    others.append(await client.get(f"{KEYS}/{first['id']}", headers=bearer(token)))
    assert all(r.status_code == 200 for r in others)

    stored = await every_stored_value(app)
    assert len({table for table, _ in stored}) > 3
    for key in issued:
        secret_part = key.split("_", 1)[1][6:]
        assert [t for t, value in stored if key in value or secret_part in value] == []
        assert [r.request.url for r in others if key in r.text or secret_part in r.text] == []


INVALID_CREATES: list[tuple[dict[str, Any], str]] = [
    ({"expires_at": "2001-01-01T00:00:00Z"}, "expiry_not_in_future"),
    ({"expires_at": "2999-01-01T00:00:00"}, "expiry_without_zone"),
    (
        {"rate_limits": [{"name": "r", "limit": 1, "window_seconds": 1}] * 2},
        "duplicate_rate_limit",
    ),
    ({"refill": {"amount": 10, "interval": "day"}}, "refill_needs_credits"),
    ({"prefix": "Not_A_Prefix"}, "validation_error"),
    ({"prefix": "x" * 17}, "validation_error"),
    ({"name": ""}, "validation_error"),
    ({"permissions": ["has space"]}, "validation_error"),
    ({"credits": -1}, "validation_error"),
    ({"refill": {"amount": 10, "interval": "week"}, "credits": 1}, "validation_error"),
    ({"metadata": ["not", "an", "object"]}, "validation_error"),
    ({"rate_limits": [{"name": "r", "limit": 0, "window_seconds": 1}]}, "validation_error"),
    ({"enabled": False}, "validation_error"),
]


async def test_invalid_create_bodies_are_422_with_a_stable_code_and_create_nothing(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    token, user_id = await signed_in(client, app)
    for fields, code in INVALID_CREATES:
        response = await client.post(KEYS, json={"name": "k", **fields}, headers=bearer(token))
        assert (response.status_code, response.json()["error"]) == (422, code), fields
        assert set(response.json()) == {"error", "detail"}
    assert await key_rows(app, user_id) == []


async def test_metadata_limit_counts_compact_utf8_json_bytes(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    token, user_id = await signed_in(client, app)
    limit = app.state.settings.key_metadata_max_bytes
    overhead = len('{"k":""}')
    ascii_fits = {"k": "a" * (limit - overhead)}
    two_byte_fits = {"k": "é" * ((limit - overhead) // 2)}
    assert (limit - overhead) % 2 == 0
    for fits in (ascii_fits, two_byte_fits):
        created = await create_key(client, token, metadata=fits)
        assert created["metadata"] == fits
    for too_large in ({"k": ascii_fits["k"] + "a"}, {"k": two_byte_fits["k"] + "a"}):
        response = await client.post(
            KEYS, json={"name": "k", "metadata": too_large}, headers=bearer(token)
        )
        assert (response.status_code, response.json()["error"]) == (422, "metadata_too_large")
        assert str(limit) in response.json()["detail"]
    created_id = created["id"]
    grown = await client.patch(
        f"{KEYS}/{created_id}", json={"metadata": {"k": "a" * limit}}, headers=bearer(token)
    )
    assert (grown.status_code, grown.json()["error"]) == (422, "metadata_too_large")
    huge = await client.post(
        KEYS, json={"name": "k", "metadata": {"k": "a" * 20 * limit}}, headers=bearer(token)
    )
    assert (huge.status_code, huge.json()["error"]) == (413, "payload_too_large")
    assert len(await key_rows(app, user_id)) == 2


async def test_metadata_that_is_not_plain_json_is_refused(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    token, user_id = await signed_in(client, app)
    response = await client.post(
        KEYS,
        content=b'{"name": "k", "metadata": {"x": NaN}}',
        headers={**bearer(token), "Content-Type": "application/json"},
    )
    assert (response.status_code, response.json()["error"]) == (422, "invalid_metadata")
    assert await key_rows(app, user_id) == []


async def test_update_changes_only_the_fields_sent_and_bumps_the_version(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    token, _ = await signed_in(client, app)
    created = await create_key(client, token, **FULL_SETTINGS, expires_at=in_days(5).isoformat())
    before = await key_row(app, created["id"])
    assert before is not None

    renamed = await client.patch(
        f"{KEYS}/{created['id']}", json={"name": "renamed"}, headers=bearer(token)
    )
    assert renamed.status_code == 200, renamed.text
    body = renamed.json()
    assert "key" not in body
    assert body["name"] == "renamed"
    assert {k: v for k, v in body.items() if k not in {"name", "updated_at"}} == {
        k: v for k, v in created.items() if k not in {"name", "updated_at", "key"}
    }
    after = await key_row(app, created["id"])
    assert after is not None
    assert after.version == before.version + 1
    assert after.updated_at > before.updated_at
    assert {
        k: v for k, v in row_state(after).items() if k not in {"name", "version", "updated_at"}
    } == {k: v for k, v in row_state(before).items() if k not in {"name", "version", "updated_at"}}

    cleared = await client.patch(
        f"{KEYS}/{created['id']}",
        json={"expires_at": None, "external_id": None, "enabled": False, "permissions": []},
        headers=bearer(token),
    )
    assert cleared.status_code == 200, cleared.text
    assert cleared.json()["expires_at"] is None
    assert (cleared.json()["external_id"], cleared.json()["owner"]) == (None, created["user_id"])
    assert (cleared.json()["enabled"], cleared.json()["permissions"]) == (False, [])
    assert cleared.json()["metadata"] == FULL_SETTINGS["metadata"]

    nothing = await client.patch(f"{KEYS}/{created['id']}", json={}, headers=bearer(token))
    assert nothing.status_code == 200
    final = await key_row(app, created["id"])
    assert final is not None
    assert final.version == before.version + 2


INVALID_UPDATES: list[tuple[dict[str, Any], str]] = [
    ({"name": None}, "validation_error"),
    ({"metadata": None}, "validation_error"),
    ({"enabled": None}, "validation_error"),
    ({"credits": None}, "refill_needs_credits"),
    (
        {"rate_limits": [{"name": "r", "limit": 1, "window_seconds": 1}] * 2},
        "duplicate_rate_limit",
    ),
    ({"expires_at": "2030-01-01T00:00:00"}, "expiry_without_zone"),
    ({"prefix": "other"}, "validation_error"),
    ({"key_hash": "0" * 64}, "validation_error"),
]


async def test_invalid_updates_are_422_and_change_nothing(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    token, _ = await signed_in(client, app)
    created = await create_key(client, token, **FULL_SETTINGS)
    before = row_state(await key_row(app, created["id"]))
    for fields, code in INVALID_UPDATES:
        url = f"{KEYS}/{created['id']}"
        response = await client.patch(url, json=fields, headers=bearer(token))
        assert (response.status_code, response.json()["error"]) == (422, code), fields
    assert row_state(await key_row(app, created["id"])) == before


async def test_update_can_set_an_expiry_in_the_past_to_end_the_key_now(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    token, _ = await signed_in(client, app)
    created = await create_key(client, token)
    past = "2020-01-01T00:00:00+00:00"
    response = await client.patch(
        f"{KEYS}/{created['id']}", json={"expires_at": past}, headers=bearer(token)
    )
    assert response.status_code == 200
    assert parse_time(response.json()["expires_at"]) == parse_time(past)


async def test_revoke_is_idempotent_and_keeps_the_first_time(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    token, _ = await signed_in(client, app)
    created = await create_key(client, token)
    first = await client.post(f"{KEYS}/{created['id']}/revoke", headers=bearer(token))
    second = await client.post(f"{KEYS}/{created['id']}/revoke", headers=bearer(token))
    assert (first.status_code, second.status_code) == (200, 200)
    assert first.json()["revoked_at"] is not None
    assert second.json()["revoked_at"] == first.json()["revoked_at"]
    row = await key_row(app, created["id"])
    assert row is not None
    assert row.revoked_at is not None
    assert row.version == 2


async def test_delete_removes_the_row(app: FastAPI, client: httpx.AsyncClient) -> None:
    token, user_id = await signed_in(client, app)
    created = await create_key(client, token)
    kept = await create_key(client, token, name="kept")
    deleted = await client.delete(f"{KEYS}/{created['id']}", headers=bearer(token))
    assert (deleted.status_code, deleted.content) == (204, b"")
    assert await key_row(app, created["id"]) is None
    assert [k.id for k in await key_rows(app, user_id)] == [uuid.UUID(kept["id"])]
    for again in (
        await client.get(f"{KEYS}/{created['id']}", headers=bearer(token)),
        await client.delete(f"{KEYS}/{created['id']}", headers=bearer(token)),
    ):
        assert (again.status_code, again.json()["error"]) == (404, "key_not_found")


async def test_reroll_issues_a_key_with_the_same_settings_and_a_grace_period(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    token, _ = await signed_in(client, app)
    expiry = in_days(30)
    old = await create_key(client, token, **FULL_SETTINGS, expires_at=expiry.isoformat())
    grace = 3600
    started = datetime.now(UTC)
    response = await reroll_key(client, token, old["id"], grace_seconds=grace)
    finished = datetime.now(UTC)
    assert response.status_code == 201, response.text
    assert response.headers["Cache-Control"] == "no-store"
    new = response.json()
    assert new["id"] != old["id"]
    assert new["key"] != old["key"]
    assert parse_key(new["key"]) is not None
    assert new["start"] == display_start(new["key"])
    assert {f: new[f] for f in SETTINGS_FIELDS} == {f: old[f] for f in SETTINGS_FIELDS}
    assert parse_time(new["expires_at"]) == expiry
    assert new["replaced_by"] is None

    old_row = await key_row(app, old["id"])
    assert old_row is not None
    assert old_row.replaced_by == uuid.UUID(new["id"])
    assert old_row.expires_at is not None
    assert started + timedelta(seconds=grace) <= old_row.expires_at
    assert old_row.expires_at <= finished + timedelta(seconds=grace)
    assert old_row.version == 2
    assert old_row.revoked_at is None
    read_old = await client.get(f"{KEYS}/{old['id']}", headers=bearer(token))
    assert read_old.json()["replaced_by"] == new["id"]
    assert old["key"] not in read_old.text
    assert new["key"] not in read_old.text


async def test_reroll_keeps_an_earlier_expiry_and_grace_zero_ends_the_old_key_now(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    token, _ = await signed_in(client, app)
    soon = in_days(0.01)
    short = await create_key(client, token, expires_at=soon.isoformat())
    assert (await reroll_key(client, token, short["id"], grace_seconds=86_400)).status_code == 201
    short_row = await key_row(app, short["id"])
    assert short_row is not None
    assert short_row.expires_at == soon

    endless = await create_key(client, token)
    assert (await reroll_key(client, token, endless["id"], grace_seconds=0)).status_code == 201
    after = datetime.now(UTC)
    endless_row = await key_row(app, endless["id"])
    assert endless_row is not None
    assert endless_row.expires_at is not None
    assert endless_row.expires_at <= after


async def test_reroll_refusals(app: FastAPI, client: httpx.AsyncClient) -> None:
    token, user_id = await signed_in(client, app)
    key = await create_key(client, token)
    max_grace = app.state.settings.key_reroll_grace_max_hours * 3600
    before = row_state(await key_row(app, key["id"]))

    too_long = await reroll_key(client, token, key["id"], grace_seconds=max_grace + 1)
    assert (too_long.status_code, too_long.json()["error"]) == (422, "grace_too_long")
    negative = await reroll_key(client, token, key["id"], grace_seconds=-1)
    assert (negative.status_code, negative.json()["error"]) == (422, "validation_error")
    assert row_state(await key_row(app, key["id"])) == before
    assert len(await key_rows(app, user_id)) == 1

    assert (await reroll_key(client, token, key["id"], grace_seconds=max_grace)).status_code == 201
    again = await reroll_key(client, token, key["id"])
    assert (again.status_code, again.json()["error"]) == (409, "key_replaced")

    revoked = await create_key(client, token)
    await client.post(f"{KEYS}/{revoked['id']}/revoke", headers=bearer(token))
    refused = await reroll_key(client, token, revoked["id"])
    assert (refused.status_code, refused.json()["error"]) == (409, "key_revoked")

    expired = await create_key(client, token)
    await client.patch(
        f"{KEYS}/{expired['id']}",
        json={"expires_at": "2020-01-01T00:00:00Z"},
        headers=bearer(token),
    )
    ended = await reroll_key(client, token, expired["id"])
    assert (ended.status_code, ended.json()["error"]) == (409, "key_expired")
    assert len(await key_rows(app, user_id)) == 4


async def test_every_change_drops_the_key_from_the_verify_cache(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """CHK-AK-04: a change reaches the cache at once, not after the TTL."""
    token, user_id = await signed_in(client, app)
    bystander = await create_key(client, token, name="bystander")
    bystander_entry = prime_cache(app, bystander["id"], user_id)
    changes: list[tuple[str, str, dict[str, Any]]] = [
        ("PATCH", "", {"json": {"permissions": ["x"]}}),
        ("POST", "/revoke", {}),
        ("POST", "/reroll", {"json": {"grace_seconds": 60}}),
        ("DELETE", "", {}),
    ]
    for method, suffix, kwargs in changes:
        key = await create_key(client, token)
        entry = prime_cache(app, key["id"], user_id)
        response = await client.request(
            method, f"{KEYS}/{key['id']}{suffix}", headers=bearer(token), **kwargs
        )
        assert response.status_code in {200, 201, 204}, response.text
        if response.status_code == 201:
            SCAN.register(response.json()["key"])
        assert not cached(app, entry), (method, suffix)
    assert cached(app, bystander_entry)


async def test_live_keys_per_user_are_capped(
    app: FastAPI, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user holds at most MAX_LIVE_KEYS_PER_USER live keys (1000; 2 here). Revoked and
    rerolled keys do not count, and a reroll never hits the cap."""
    monkeypatch.setattr(keys_service, "MAX_LIVE_KEYS_PER_USER", 2)
    token, _ = await signed_in(client, app)
    first = await create_key(client, token)
    await create_key(client, token)
    refused = await client.post(KEYS, json={"name": "third"}, headers=bearer(token))
    assert (refused.status_code, refused.json()["error"]) == (409, "key_limit_reached")
    assert (await reroll_key(client, token, first["id"], grace_seconds=60)).status_code == 201
    refused = await client.post(KEYS, json={"name": "third"}, headers=bearer(token))
    assert refused.status_code == 409
    listed = (await client.get(KEYS, headers=bearer(token))).json()["keys"]
    live = next(k for k in listed if k["replaced_by"] is None)
    await client.post(f"{KEYS}/{live['id']}/revoke", headers=bearer(token))
    await create_key(client, token, name="third")


async def test_list_pages_newest_first(app: FastAPI, client: httpx.AsyncClient) -> None:
    token, _ = await signed_in(client, app)
    made = [(await create_key(client, token, name=f"k{i}"))["id"] for i in range(3)]
    first = (await client.get(KEYS, params={"limit": 2}, headers=bearer(token))).json()
    assert [k["id"] for k in first["keys"]] == made[::-1][:2]
    assert first["next_after"] == made[1]
    rest = await client.get(
        KEYS, params={"limit": 2, "after": first["next_after"]}, headers=bearer(token)
    )
    assert [k["id"] for k in rest.json()["keys"]] == [made[0]]
    assert rest.json()["next_after"] is None
    too_many = await client.get(KEYS, params={"limit": 100_000}, headers=bearer(token))
    assert (too_many.status_code, too_many.json()["error"]) == (422, "validation_error")


async def test_bad_and_unknown_ids_are_422_and_404(app: FastAPI, client: httpx.AsyncClient) -> None:
    token, _ = await signed_in(client, app)
    routes: list[tuple[str, str, dict[str, Any] | None]] = [
        ("GET", "", None),
        ("PATCH", "", {"name": "x"}),
        ("POST", "/revoke", None),
        ("POST", "/reroll", {"grace_seconds": 0}),
        ("DELETE", "", None),
    ]
    for method, suffix, body in routes:
        kwargs: dict[str, Any] = {"json": body} if body is not None else {}
        for bad_id in ("not-a-uuid", "1", "%00", "0" * 33):
            malformed = await client.request(
                method, f"{KEYS}/{bad_id}{suffix}", headers=bearer(token), **kwargs
            )
            assert malformed.status_code in {404, 422}, (method, suffix, bad_id)
            assert malformed.json()["error"] in {"not_found", "validation_error"}
        missing = await client.request(
            method, f"{KEYS}/{uuid.uuid4()}{suffix}", headers=bearer(token), **kwargs
        )
        assert (missing.status_code, missing.json()["error"]) == (404, "key_not_found")


async def test_a_key_in_the_url_is_never_accepted_or_echoed_CHK_AK_02(
    app: FastAPI, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The test client logs its own request lines (with the URL this test abuses); the server's
    # log records are still scanned for the key.
    monkeypatch.setattr(logging.getLogger("httpx"), "disabled", True)
    token, _ = await signed_in(client, app)
    created = await create_key(client, token)
    key = created["key"]
    as_id = await client.get(f"{KEYS}/{key}", headers=bearer(token))
    assert (as_id.status_code, as_id.json()["error"]) == (422, "validation_error")
    as_query = await client.get(KEYS, params={"key": key}, headers=bearer(token))
    assert as_query.status_code == 200
    client.cookies.clear()
    anonymous = await client.get(KEYS, params={"key": key, "api_key": key})
    assert anonymous.status_code == 401
    for response in (as_id, as_query, anonymous):
        assert key not in SCAN.record("key in url", response.text)


def test_the_key_routes_are_in_the_openapi_document_with_no_key_parameter(app: FastAPI) -> None:
    paths = app.openapi()["paths"]
    expected = {
        "/api/keys": {"get", "post"},
        "/api/keys/{key_id}": {"get", "patch", "delete"},
        "/api/keys/{key_id}/revoke": {"post"},
        "/api/keys/{key_id}/reroll": {"post"},
        "/api/admin/users/{user_id}/keys": {"get", "post"},
        "/api/admin/users/{user_id}/keys/{key_id}": {"get", "patch", "delete"},
        "/api/admin/users/{user_id}/keys/{key_id}/revoke": {"post"},
        "/api/admin/users/{user_id}/keys/{key_id}/reroll": {"post"},
    }
    for path, methods in expected.items():
        assert methods <= set(paths[path]), path
        for method in methods:
            names = {p["name"] for p in paths[path][method].get("parameters", [])}
            assert names <= {"key_id", "user_id", "limit", "after"}, (path, method)
    created = paths["/api/keys"]["post"]["responses"]["201"]["content"]["application/json"]
    assert created["schema"]["$ref"].endswith("/KeyCreated")


RACE_CALLERS = 16
RACE_TRIALS = 3


async def test_concurrent_rerolls_of_one_key_make_exactly_one_successor(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """B2 race: 16 concurrent rerolls of one key → one 201, the rest 409 key_replaced, and the
    old key points at the one successor that exists."""
    token, user_id = await signed_in(client, app)
    engine = app.state.database.engine.dialect.name
    for _ in range(RACE_TRIALS):
        key = await create_key(client, token)
        answers = await asyncio.gather(
            *(reroll_key(client, token, key["id"], 60) for _ in range(RACE_CALLERS))
        )
        codes = sorted(a.status_code for a in answers)
        assert codes == [201] + [409] * (RACE_CALLERS - 1)
        assert {a.json()["error"] for a in answers if a.status_code == 409} == {"key_replaced"}
        winner = next(a.json()["id"] for a in answers if a.status_code == 201)
        old = await key_row(app, key["id"])
        assert old is not None
        assert old.replaced_by == uuid.UUID(winner)
    assert len(await key_rows(app, user_id)) == 2 * RACE_TRIALS
    FIGURES.append(
        f"keys reroll race {engine}: {RACE_TRIALS} trials x {RACE_CALLERS} callers, "
        "1 successor per key, 0 extra keys"
    )


async def test_concurrent_creates_stop_exactly_at_the_cap(
    app: FastAPI, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """B2 race: 16 concurrent creates against a cap of 5 live keys → exactly 5 keys."""
    cap = 5
    monkeypatch.setattr(keys_service, "MAX_LIVE_KEYS_PER_USER", cap)
    engine = app.state.database.engine.dialect.name
    created_counts = []
    for _ in range(RACE_TRIALS):
        token, user_id = await signed_in(client, app)
        answers = await asyncio.gather(
            *(
                client.post(KEYS, json={"name": f"k{i}"}, headers=bearer(token))
                for i in range(RACE_CALLERS)
            )
        )
        for answer in answers:
            if answer.status_code == 201:
                SCAN.register(answer.json()["key"])
        codes = sorted(a.status_code for a in answers)
        assert codes == [201] * cap + [409] * (RACE_CALLERS - cap)
        created_counts.append(len(await key_rows(app, user_id)))
    assert created_counts == [cap] * RACE_TRIALS
    FIGURES.append(
        f"keys cap race {engine}: {RACE_TRIALS} trials x {RACE_CALLERS} callers, cap {cap}, "
        f"keys created {created_counts}"
    )
