"""Verify's request-driven checks: the permissions expression and the key's rate limits
(SPEC §7, docs/api-keys.md "Verifying keys")."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI
from verify_helpers import VERIFY, make_key, make_user, spy_meter, verify

from authkeep.keys.permissions import MAX_DEPTH
from support.secrets_scan import SCAN

REQUESTS = {"name": "requests", "limit": 3, "window_seconds": 60}
BURST = {"name": "burst", "limit": 10, "window_seconds": 1}


async def test_the_permissions_expression_against_the_keys_permissions(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """`and` binds tighter than `or`, keywords in any case, wildcards in the key's
    permissions (`billing.*` grants `billing.refund`; `*` grants everything)."""
    issued = await make_key(app, permissions=["documents.read", "billing.*"])
    everything = await make_key(app, permissions=["*"])
    cases = {
        "documents.read": "VALID",
        "documents.read AND billing.refund": "VALID",
        "documents.write or documents.read and billing.x": "VALID",
        "(documents.write or documents.read) and billing.x.y": "VALID",
        "documents.write": "INSUFFICIENT_PERMISSIONS",
        "documents.read and (documents.write Or admin)": "INSUFFICIENT_PERMISSIONS",
        "billing": "INSUFFICIENT_PERMISSIONS",
        "documents.*": "INSUFFICIENT_PERMISSIONS",
    }
    for expression, expected in cases.items():
        result = await verify(client, issued.key, {"permissions": expression})
        assert result["code"] == expected, expression
        assert (await verify(client, everything.key, {"permissions": expression}))["valid"]


@pytest.mark.parametrize(
    "expression",
    [
        "",
        "   ",
        "a and",
        "or b",
        "a b",
        "(a",
        "a)",
        "()",
        "a and or b",
        "a && b",
        "a, b",
        "read/write",
        "(" * (MAX_DEPTH + 1) + "a" + ")" * (MAX_DEPTH + 1),
    ],
)
async def test_a_malformed_expression_is_a_422(
    app: FastAPI, client: httpx.AsyncClient, expression: str
) -> None:
    issued = await make_key(app, permissions=["a", "b"])
    response = await client.post(
        VERIFY, json={"permissions": expression}, headers={"x-api-key": issued.key}
    )
    SCAN.record("verify 422", response.text)
    assert response.status_code == 422
    assert response.json()["error"] == "invalid_permissions_expression"


async def test_an_expression_over_1000_characters_is_refused(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    issued = await make_key(app, permissions=["a"])
    longest = " or ".join(["a"] * 200)[:1000].rstrip(" or")
    assert (await verify(client, issued.key, {"permissions": longest}))["code"] == "VALID"
    response = await client.post(
        VERIFY, json={"permissions": "a " + "or a " * 200}, headers={"x-api-key": issued.key}
    )
    assert response.status_code == 422


async def test_every_rate_limit_at_cost_one_by_default(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """`ratelimits` not sent: each of the key's limits takes 1 unit; the fourth call of a
    3-per-minute key is RATE_LIMITED with the seconds until a unit frees up."""
    issued = await make_key(app, rate_limits=[REQUESTS, BURST])
    for remaining in (2, 1, 0):
        result = await verify(client, issued.key)
        assert result["code"] == "VALID"
        assert result["ratelimits"] == [
            {
                "name": "requests",
                "limit": 3,
                "remaining": remaining,
                "reset": 0.0,
                "exceeded": False,
            },
            {
                "name": "burst",
                "limit": 10,
                "remaining": 7 + remaining,
                "reset": 0.0,
                "exceeded": False,
            },
        ]
    refused = await verify(client, issued.key)
    assert (refused["code"], refused["valid"]) == ("RATE_LIMITED", False)
    [state] = refused["ratelimits"]  # checking stops at the first exceeded limit
    assert state["name"] == "requests"
    assert state["exceeded"] is True
    assert state["remaining"] == 0
    assert 0 < state["reset"] <= 60


async def test_named_rate_limits_at_their_cost(app: FastAPI, client: httpx.AsyncClient) -> None:
    """Only the named limits are applied, each at its own cost."""
    issued = await make_key(app, rate_limits=[REQUESTS, BURST])
    result = await verify(client, issued.key, {"ratelimits": [{"name": "burst", "cost": 4}]})
    assert result["ratelimits"] == [
        {"name": "burst", "limit": 10, "remaining": 6, "reset": 0.0, "exceeded": False}
    ]
    too_much = await verify(client, issued.key, {"ratelimits": [{"name": "burst", "cost": 7}]})
    assert too_much["code"] == "RATE_LIMITED"
    assert too_much["ratelimits"][0]["remaining"] == 6
    untouched = await verify(client, issued.key, {"ratelimits": [{"name": "requests"}]})
    assert untouched["ratelimits"][0]["remaining"] == 2


async def test_an_unknown_rate_limit_name_is_a_422(
    app: FastAPI, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorded = spy_meter(app, monkeypatch)
    issued = await make_key(app, rate_limits=[REQUESTS])
    response = await client.post(
        VERIFY,
        json={"ratelimits": [{"name": "requests"}, {"name": "nope"}]},
        headers={"x-api-key": issued.key},
    )
    SCAN.record("verify 422", response.text)
    assert response.status_code == 422
    assert response.json()["error"] == "unknown_rate_limit"
    assert "nope" in response.json()["detail"]
    assert recorded == []
    # Nothing was taken from the named limit that does exist.
    result = await verify(client, issued.key, {"ratelimits": [{"name": "requests"}]})
    assert result["ratelimits"][0]["remaining"] == 2


async def test_keys_of_one_external_owner_share_their_limits(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """Keys of one user with the same external_id draw from one bucket per limit name; a key
    without an external_id has its own buckets, and another account choosing the same
    external_id gets buckets of its own (it can neither use up nor block this pool)."""
    rule = {"name": "requests", "limit": 2, "window_seconds": 60}
    user = await make_user(app)
    first = await make_key(app, user, external_id="customer-1", rate_limits=[rule])
    second = await make_key(app, user, external_id="customer-1", rate_limits=[rule])
    alone = await make_key(app, user, rate_limits=[rule])
    other_owner = await make_key(app, user, external_id="customer-2", rate_limits=[rule])
    intruder = await make_key(
        app, await make_user(app), external_id="customer-1", rate_limits=[rule]
    )
    assert (await verify(client, first.key))["code"] == "VALID"
    assert (await verify(client, second.key))["code"] == "VALID"
    assert (await verify(client, first.key))["code"] == "RATE_LIMITED"
    assert (await verify(client, second.key))["code"] == "RATE_LIMITED"
    for own in (alone, other_owner, intruder, intruder):
        assert (await verify(client, own.key))["code"] == "VALID"


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b'{"cost": -1}',
        b'{"cost": "many"}',
        b'{"ratelimits": [{"name": "a b"}]}',
        b'{"feature": "' + b"f" * 65 + b'"}',
        b"[]",
    ],
)
async def test_a_malformed_body_is_a_422(
    app: FastAPI, client: httpx.AsyncClient, body: bytes
) -> None:
    issued = await make_key(app)
    response = await client.post(
        VERIFY, content=body, headers={"x-api-key": issued.key, "content-type": "application/json"}
    )
    SCAN.record("verify 422", response.text)
    assert response.status_code == 422
    assert response.json()["error"] == "validation_error"
    assert issued.key not in response.text


async def test_an_oversized_body_is_refused(app: FastAPI, client: httpx.AsyncClient) -> None:
    issued = await make_key(app)
    response = await client.post(
        VERIFY,
        content=b'{"permissions": "' + b"a" * 20_000 + b'"}',
        headers={"x-api-key": issued.key, "content-type": "application/json"},
    )
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"
