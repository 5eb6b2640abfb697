"""POST /api/keys/verify: where the key travels, the answer for each outcome, and the order in
which the checks decide (SPEC §6-7, docs/api-keys.md "Verifying keys")."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from verify_helpers import (
    VERIFY,
    make_key,
    make_plan,
    make_user,
    spy_meter,
    statements,
    subscribe,
    verify,
)

from authkeep.core.models import utcnow
from authkeep.keys.format import CHECKSUM_LENGTH, new_key
from support.secrets_scan import SCAN


@pytest.mark.parametrize("header", ["x-api-key", "authorization"])
async def test_a_valid_key_answers_valid_with_its_details(
    app: FastAPI, client: httpx.AsyncClient, header: str
) -> None:
    """The key in X-API-Key or Authorization: Bearer; the answer carries the key's details."""
    expires = utcnow() + timedelta(days=3)
    issued = await make_key(
        app,
        name="billing worker",
        permissions=["documents.read"],
        meta={"team": "billing", "tier": 2},
        expires_at=expires,
    )
    result = await verify(client, issued.key, header=header)
    assert result["valid"] is True
    assert result["code"] == "VALID"
    assert result["key_id"] == str(issued.key_id)
    assert result["user_id"] == str(issued.user_id)
    assert result["owner"] == str(issued.user_id)
    assert result["name"] == "billing worker"
    assert result["permissions"] == ["documents.read"]
    assert result["metadata"] == {"team": "billing", "tier": 2}
    assert datetime.fromisoformat(result["expires_at"]) == expires
    assert result["credits_remaining"] is None
    assert result["ratelimits"] == []
    assert result["entitlements"] == []
    assert result["plan"] is None


async def test_the_owner_is_the_external_id_when_set(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    issued = await make_key(app, external_id="customer-42")
    assert (await verify(client, issued.key))["owner"] == "customer-42"


@pytest.mark.parametrize("parameter", ["key", "api_key", "apiKey", "token"])
async def test_a_key_in_the_query_string_is_never_read(
    app: FastAPI, client: httpx.AsyncClient, parameter: str
) -> None:
    """CHK-AK-02: a key in the URL is ignored, so the request has no key: 401. (The key is not
    given to the suite's secret scan: the test client itself logs the URL it was told to use.)"""
    issued = await make_key(app, scanned=False)
    response = await client.post(VERIFY, params={parameter: issued.key}, json={})
    SCAN.record("verify query-string refusal", response.text)
    assert response.status_code == 401
    assert response.json()["error"] == "missing_api_key"
    assert issued.key not in response.text


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"x-api-key": ""},
        {"x-api-key": "   "},
        {"authorization": "Bearer "},
        {"authorization": "Basic dXNlcjpwYXNz"},
    ],
)
async def test_no_key_header_is_401(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    response = await client.post(VERIFY, json={}, headers=headers)
    assert response.status_code == 401
    assert response.json()["error"] == "missing_api_key"


def _malformed(key: str) -> list[str]:
    flipped = key[:-1] + ("A" if key[-1] != "A" else "B")
    return [
        "x",
        "ak_",
        key[:-1],
        key + "0",
        flipped,
        key.upper(),
        "ak_" + "0" * 43 + "000000",
        "AK" + key[2:],
        key.replace("_", "-"),
        key + " junk",
        "ak_" + "é" * 49,
        "a" * 5000,
        "'; DROP TABLE api_keys; --",
    ]


async def test_a_malformed_key_is_not_found_without_touching_the_database(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """SPEC §7: a bad shape or checksum is refused before any lookup — no statement, no
    connection taken from the pool (statement counter on the engine)."""
    issued = await make_key(app)
    for header in ("x-api-key", "authorization"):
        for text in _malformed(issued.key):
            with statements(app) as log:
                result = await verify(client, text, header=header)
            assert result == _bare_not_found(), text
            assert log.statements == [], text
            assert log.checkouts == 0, text


async def test_an_unknown_well_formed_key_is_not_found(
    app: FastAPI, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checksum passes but no key has this digest: NOT_FOUND, and nothing is counted."""
    recorded = spy_meter(app, monkeypatch)
    unknown = SCAN.register(new_key("ak"))
    result = await verify(client, unknown)
    assert result == _bare_not_found()
    assert recorded == []


async def test_an_empty_body_uses_the_defaults(app: FastAPI, client: httpx.AsyncClient) -> None:
    """No body at all: cost 1, every rate limit of the key at cost 1, no permission check."""
    issued = await make_key(
        app,
        credits_remaining=5,
        rate_limits=[{"name": "requests", "limit": 10, "window_seconds": 60}],
    )
    response = await client.post(VERIFY, headers={"x-api-key": issued.key})
    assert response.status_code == 200
    result = response.json()
    assert result["code"] == "VALID"
    assert result["credits_remaining"] == 4
    assert result["ratelimits"] == [
        {"name": "requests", "limit": 10, "remaining": 9, "reset": 0.0, "exceeded": False}
    ]
    assert response.headers["cache-control"] == "no-store"


async def test_unknown_body_fields_are_refused(app: FastAPI, client: httpx.AsyncClient) -> None:
    issued = await make_key(app)
    response = await client.post(
        VERIFY, json={"key": issued.key, "cost": 1}, headers={"x-api-key": issued.key}
    )
    SCAN.record("verify body refusal", response.text)
    assert response.status_code == 422
    assert response.json()["error"] == "validation_error"
    assert issued.key not in response.text


async def _states(app: FastAPI) -> dict[str, Any]:
    """One key per combination of failing checks; each named after the outcome it must give."""
    soon_past = utcnow() - timedelta(seconds=1)
    disabled_owner = await make_user(app, disabled_at=utcnow())
    deleted_owner = await make_user(app, deleted_at=utcnow())
    plan = await make_plan(app, ["api"])
    subscribed = await make_user(app)
    await subscribe(app, subscribed, plan)
    one_per_minute = [{"name": "requests", "limit": 1, "window_seconds": 60}]
    return {
        "disabled beats everything": (
            await make_key(
                app, disabled_owner, enabled=False, expires_at=soon_past, credits_remaining=0
            ),
            {"permissions": "nope", "feature": "api"},
            "DISABLED",
        ),
        "revoked is disabled": (
            await make_key(app, revoked_at=utcnow(), expires_at=soon_past),
            {},
            "DISABLED",
        ),
        "expired beats the owner": (
            await make_key(app, disabled_owner, expires_at=soon_past),
            {"permissions": "nope"},
            "EXPIRED",
        ),
        "disabled owner beats permissions": (
            await make_key(app, disabled_owner),
            {"permissions": "nope"},
            "FORBIDDEN",
        ),
        "deleted owner": (await make_key(app, deleted_owner), {}, "FORBIDDEN"),
        "feature not granted beats permissions": (
            await make_key(app, subscribed),
            {"feature": "exports", "permissions": "nope"},
            "FORBIDDEN",
        ),
        "granted feature passes": (
            await make_key(app, subscribed, permissions=["a"]),
            {"feature": "api", "permissions": "a"},
            "VALID",
        ),
        "permissions beat credits": (
            await make_key(app, credits_remaining=0, rate_limits=one_per_minute),
            {"permissions": "documents.read"},
            "INSUFFICIENT_PERMISSIONS",
        ),
        "credits exhausted": (
            await make_key(app, credits_remaining=0, rate_limits=one_per_minute),
            {},
            "USAGE_EXCEEDED",
        ),
    }


async def test_each_outcome_and_the_order_of_the_checks(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """Outcome order: parse → lookup → DISABLED → EXPIRED → FORBIDDEN →
    INSUFFICIENT_PERMISSIONS → RATE_LIMITED → USAGE_EXCEEDED → VALID. Each key fails several
    checks; the earliest decides."""
    for case, (issued, body, expected) in (await _states(app)).items():
        result = await verify(client, issued.key, body)
        assert result["code"] == expected, case
        assert result["valid"] is (expected == "VALID"), case
        assert result["key_id"] == str(issued.key_id), case


async def test_rate_limits_come_before_credits(app: FastAPI, client: httpx.AsyncClient) -> None:
    """A key out of credits with one request per minute: the first call spends the rate limit
    and is refused for credits; the second is refused by the rate limit, before credits."""
    issued = await make_key(
        app,
        credits_remaining=0,
        rate_limits=[{"name": "requests", "limit": 1, "window_seconds": 60}],
    )
    first = await verify(client, issued.key)
    assert first["code"] == "USAGE_EXCEEDED"
    second = await verify(client, issued.key)
    assert second["code"] == "RATE_LIMITED"
    assert second["ratelimits"][0]["exceeded"] is True
    assert second["credits_remaining"] == 0


async def test_every_found_key_is_counted_once_with_its_outcome(
    app: FastAPI, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Usage: each verification of a found key is recorded once — units = cost when VALID,
    else 0; malformed and unknown keys are not recorded (there is no key to count)."""
    recorded = spy_meter(app, monkeypatch)
    valid = await make_key(app, external_id="team-7")
    revoked = await make_key(app, revoked_at=utcnow())
    await verify(client, valid.key, {"cost": 3})
    await verify(client, revoked.key, {"cost": 3})
    await verify(client, valid.key[:-1])
    await verify(client, SCAN.register(new_key("ak")))
    assert recorded == [
        (valid.key_id, valid.user_id, "team-7", "VALID", 3),
        (revoked.key_id, revoked.user_id, str(revoked.user_id), "DISABLED", 0),
    ]


async def test_a_caller_error_is_not_a_key_outcome(
    app: FastAPI, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A malformed expression is a 422 for any key, found or not, and is not counted."""
    recorded = spy_meter(app, monkeypatch)
    issued = await make_key(app)
    for key in (issued.key, issued.key[:-CHECKSUM_LENGTH] + "000000"):
        response = await client.post(
            VERIFY, json={"permissions": "a and (b"}, headers={"x-api-key": key}
        )
        SCAN.record("verify 422", response.text)
        assert response.status_code == 422
        assert response.json()["error"] == "invalid_permissions_expression"
        assert key not in response.text
    assert recorded == []


# ---- helpers ---------------------------------------------------------------------------------


def _bare_not_found() -> dict[str, Any]:
    return {
        "valid": False,
        "code": "NOT_FOUND",
        "key_id": None,
        "owner": None,
        "user_id": None,
        "name": None,
        "permissions": [],
        "metadata": {},
        "expires_at": None,
        "credits_remaining": None,
        "ratelimits": [],
        "entitlements": [],
        "plan": None,
    }
