"""`GET /api/usage` and `POST /api/usage/report` on both engines: a user's own rows with totals
and filters, never another user's (CHK-AC-02), admins by `user_id`, window limits, CSV export
with spreadsheet formulas neutralised, and cached usage reported with the key (CHK-AK-02)."""

from __future__ import annotations

import csv
import io
import logging
import uuid
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from usage_helpers import counts, delta, last_used, seed

from admin.admin_helpers import signed_in_admin
from authkeep.core.models import utcnow
from keys.key_helpers import create_key
from support.secrets_scan import SCAN
from users.identity_helpers import bearer, database, new_user

USAGE = "/api/usage"
REPORT = "/api/usage/report"


def this_hour() -> Any:
    return utcnow().replace(minute=0, second=0, microsecond=0)


async def get_usage(client: httpx.AsyncClient, token: str | None, **params: Any) -> httpx.Response:
    headers = bearer(token) if token else {}
    return await client.get(USAGE, params=params, headers=headers)


async def two_users_with_usage(app: FastAPI, client: httpx.AsyncClient) -> dict[str, Any]:
    """User A: keys a1 (external id acme) and a2, rows this hour and three days ago.
    User B: key b1 with rows this hour."""
    _, _, token_a = await new_user(client)
    a1 = await create_key(client, token_a, external_id="acme")
    a2 = await create_key(client, token_a)
    _, _, token_b = await new_user(client)
    b1 = await create_key(client, token_b)
    user_a, user_b = uuid.UUID(a1["user_id"]), uuid.UUID(b1["user_id"])
    ka1, ka2, kb1 = (uuid.UUID(k["id"]) for k in (a1, a2, b1))
    now, old = this_hour(), this_hour() - timedelta(days=3)
    await seed(
        database(app),
        delta(ka1, user_a, now, owner="acme", count=5, units=7),
        delta(ka1, user_a, now, owner="acme", outcome="RATE_LIMITED", count=2),
        delta(ka2, user_a, now, count=3),
        delta(ka1, user_a, old, owner="acme", count=11),
        delta(kb1, user_b, now, count=100),
        delta(ka1, user_a, now.replace(hour=0), owner="acme", granularity="day", count=9),
    )
    return {
        "token_a": token_a,
        "token_b": token_b,
        "user_a": user_a,
        "ka1": ka1,
        "ka2": ka2,
        "kb1": kb1,
    }


def keyed_rows(body: dict[str, Any]) -> set[tuple[str, str, int]]:
    return {(row["key_id"], row["outcome"], row["count"]) for row in body["rows"]}


async def test_a_user_reads_their_own_usage_with_totals_and_filters(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    ctx = await two_users_with_usage(app, client)
    ka1, ka2, token = str(ctx["ka1"]), str(ctx["ka2"]), ctx["token_a"]

    response = await get_usage(client, token)
    assert response.status_code == 200, response.text
    assert response.headers["Cache-Control"] == "no-store"
    body = response.json()
    assert body["granularity"] == "hour"
    assert keyed_rows(body) == {(ka1, "VALID", 5), (ka1, "RATE_LIMITED", 2), (ka2, "VALID", 3)}
    assert body["totals"] == {
        "count": 10,
        "units": 12,
        "by_outcome": {"VALID": 8, "RATE_LIMITED": 2},
    }
    first = next(r for r in body["rows"] if r["key_id"] == ka1 and r["outcome"] == "VALID")
    assert first["owner"] == "acme"
    assert first["units"] == 7
    assert first["bucket_start"] == this_hour().isoformat().replace("+00:00", "Z")

    by_key = (await get_usage(client, token, key_id=ka2)).json()
    assert keyed_rows(by_key) == {(ka2, "VALID", 3)}
    by_outcome = (await get_usage(client, token, outcome="RATE_LIMITED")).json()
    assert keyed_rows(by_outcome) == {(ka1, "RATE_LIMITED", 2)}
    by_owner = (await get_usage(client, token, owner="acme")).json()
    assert keyed_rows(by_owner) == {(ka1, "VALID", 5), (ka1, "RATE_LIMITED", 2)}

    start = (utcnow() - timedelta(days=4)).isoformat()
    wide = (await get_usage(client, token, start=start, key_id=ka1, outcome="VALID")).json()
    assert [r["count"] for r in wide["rows"]] == [11, 5]  # oldest bucket first
    assert wide["totals"]["count"] == 16

    days = (await get_usage(client, token, granularity="day")).json()
    assert keyed_rows(days) == {(ka1, "VALID", 9)}


async def test_another_users_usage_is_never_shown_CHK_AC_02(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """User B naming A's key gets 404 (as for a key that does not exist); B naming A's user id
    gets 403; an admin may read A's usage by user id; no session gets 401."""
    ctx = await two_users_with_usage(app, client)
    token_b = ctx["token_b"]

    own = (await get_usage(client, token_b)).json()
    assert keyed_rows(own) == {(str(ctx["kb1"]), "VALID", 100)}
    for key_id in (ctx["ka1"], ctx["ka2"], uuid.uuid4()):
        response = await get_usage(client, token_b, key_id=str(key_id))
        assert response.status_code == 404
        assert response.json()["error"] == "key_not_found"
    response = await get_usage(client, token_b, user_id=str(ctx["user_a"]))
    assert response.status_code == 403
    assert response.json()["error"] == "forbidden"
    client.cookies.clear()
    assert (await get_usage(client, None)).status_code == 401

    _, _, admin_token = await signed_in_admin(app, client)
    as_admin = await get_usage(client, admin_token, user_id=str(ctx["user_a"]))
    assert as_admin.status_code == 200
    assert as_admin.json()["totals"]["count"] == 10
    on_key = await get_usage(
        client, admin_token, user_id=str(ctx["user_a"]), key_id=str(ctx["ka2"])
    )
    assert keyed_rows(on_key.json()) == {(str(ctx["ka2"]), "VALID", 3)}


BAD_QUERIES: list[dict[str, str]] = [
    {"start": "2031-01-02T00:00:00Z", "end": "2031-01-01T00:00:00Z"},
    {"start": "2031-01-01T00:00:00Z", "end": "2031-02-01T01:00:00Z"},  # hourly > 31 days
    {"start": "2030-01-01T00:00:00Z", "end": "2031-01-02T00:00:00Z"},  # hourly 366 days
    {"granularity": "day", "start": "2030-01-01T00:00:00Z", "end": "2031-01-03T00:00:00Z"},
    {"granularity": "minute"},
    {"outcome": "BOGUS"},
    {"start": "yesterday"},
    {"key_id": "not-a-uuid"},
    {"api_key": "ak_whatever"},
]


async def test_bad_queries_are_422(client: httpx.AsyncClient) -> None:
    """Reversed or too large windows (hourly at most 31 days, daily 366), unknown
    granularity or outcome, unparsable values and unknown parameters."""
    _, _, token = await new_user(client)
    for params in BAD_QUERIES:
        response = await get_usage(client, token, **params)
        assert response.status_code == 422, (params, response.text)
        assert response.json()["error"] == "validation_error"


async def test_the_largest_windows_are_accepted(client: httpx.AsyncClient) -> None:
    _, _, token = await new_user(client)
    hourly = await get_usage(
        client, token, start="2031-01-01T00:00:00Z", end="2031-02-01T00:00:00Z"
    )
    assert hourly.status_code == 200
    daily = await get_usage(
        client, token, granularity="day", start="2030-01-01T00:00:00Z", end="2031-01-02T00:00:00"
    )
    assert daily.status_code == 200
    assert daily.json()["end"] == "2031-01-02T00:00:00Z"  # no zone given: UTC


async def test_csv_export_has_a_header_and_neutralises_formulas(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    _, _, token = await new_user(client)
    owners = ['=HYPERLINK("http://evil")', "+1+1", "-2", "@SUM(A1)", "plain, with comma"]
    keys = [await create_key(client, token, external_id=owner) for owner in owners]
    now = this_hour()
    await seed(
        database(app),
        *(
            delta(uuid.UUID(k["id"]), uuid.UUID(k["user_id"]), now, owner=k["owner"], count=n + 1)
            for n, k in enumerate(keys)
        ),
    )
    as_json = (await get_usage(client, token)).json()
    for response in (
        await get_usage(client, token, format="csv"),
        await client.get(USAGE, headers={**bearer(token), "Accept": "text/csv"}),
    ):
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/csv; charset=utf-8"
        assert response.headers["Cache-Control"] == "no-store"
        assert response.text.startswith("bucket_start,key_id,owner,outcome,count,units\r\n")
        table = list(csv.reader(io.StringIO(response.text)))
        assert len(table) == 1 + len(owners)
        got = {row[2]: row for row in table[1:]}
        assert set(got) == {
            '\'=HYPERLINK("http://evil")',
            "'+1+1",
            "'-2",
            "'@SUM(A1)",
            "plain, with comma",
        }
        for row in as_json["rows"]:
            line = next(r for r in table[1:] if r[1] == row["key_id"])
            assert line[0] == row["bucket_start"]
            assert line[3:] == [row["outcome"], str(row["count"]), str(row["units"])]
    explicit_json = await client.get(
        USAGE, params={"format": "json"}, headers={**bearer(token), "Accept": "text/csv"}
    )
    assert explicit_json.json()["totals"]["count"] == 15


async def test_cached_usage_is_reported_with_the_key_and_counted_as_valid(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    _, _, token = await new_user(client)
    key = await create_key(client, token, external_id="cached-client")
    key_id = uuid.UUID(key["id"])
    first = await client.post(
        REPORT, json={"count": 5, "units": 9}, headers={"X-API-Key": key["key"]}
    )
    assert first.status_code == 202, first.text
    assert first.json() == {"count": 5, "units": 9}
    second = await client.post(REPORT, json={"count": 2}, headers=bearer(key["key"]))
    assert second.status_code == 202
    await app.state.meter.flush()  # (or the background flusher already did)

    stored = await counts(database(app), "hour")
    assert {(k, o): v for (k, o, _, _), v in stored.items()} == {(key_id, "VALID"): (7, 11)}
    assert await last_used(database(app), key_id) is not None
    shown = (await get_usage(client, token, owner="cached-client")).json()
    assert shown["totals"] == {"count": 7, "units": 11, "by_outcome": {"VALID": 7}}


async def test_cached_usage_reports_are_refused_without_a_usable_key_CHK_AK_02(
    app: FastAPI, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bad counts → 422; no key, a key only in the URL, or a revoked key → 401; nothing is
    counted. The test client's own request log is off (it would log the URL this test abuses);
    the server's log and the answers are still scanned for the key."""
    monkeypatch.setattr(logging.getLogger("httpx"), "disabled", True)
    _, _, token = await new_user(client)
    key = await create_key(client, token)
    header = {"X-API-Key": key["key"]}
    for body in ({"count": 0}, {"count": 100_001}, {"count": 1, "units": -1}, {"count": 1, "x": 1}):
        response = await client.post(REPORT, json=body, headers=header)
        assert response.status_code == 422, body
    assert (await client.post(REPORT, json={"count": 1})).status_code == 401
    in_query = await client.post(REPORT, params={"api_key": key["key"]}, json={"count": 1})
    assert in_query.status_code == 401
    assert key["key"] not in SCAN.record("usage report refusal", in_query.text)
    revoked = await client.post(f"/api/keys/{key['id']}/revoke", headers=bearer(token))
    assert revoked.status_code == 200
    assert (await client.post(REPORT, json={"count": 1}, headers=header)).status_code == 401
    assert app.state.meter.pending_events == 0
