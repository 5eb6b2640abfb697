"""The MFA limiters in the metrics (CHK-BF-04): each request refused by the per-account budget
of wrong codes counts once under `mfa`, each refused by a challenge's budget once under
`mfa_challenge`, read from the app's own `GET /metrics`."""

from __future__ import annotations

from collections import Counter

import httpx
import time_machine
from identity_helpers import bearer, client_for, database, started_app
from mfa_helpers import START, CodeWatch, challenge, mfa_user, sign_in_mfa
from prometheus_client.parser import text_string_to_metric_families

from authkeep.core.ratelimit import limiter_for
from authkeep.mfa import service as mfa
from authkeep.mfa.routes import ACCOUNT_FAILURES, CHALLENGE_FAILURES, CHALLENGE_WINDOW_SECONDS
from authkeep.users.signin import MFA_CHALLENGE

N = 4


async def refused_counts(client: httpx.AsyncClient) -> Counter[str]:
    response = await client.get("/metrics")
    assert response.status_code == 200
    counts: Counter[str] = Counter()
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == "authkeep_rate_limited_total":
                counts[sample.labels["limiter"]] = int(sample.value)
    return counts


def rose(before: Counter[str], after: Counter[str]) -> dict[str, int]:
    return {name: after[name] - before[name] for name in after if after[name] != before[name]}


def wrong(user_code: str) -> str:
    return f"{(int(user_code) + 500_000) % 1_000_000:06d}"


async def test_account_budget_of_wrong_codes_counts_each_refusal_CHK_BF_04(
    migrated_url: str, make_settings, code_watch: CodeWatch
):
    """10 wrong codes on `recovery-codes` use up the account's budget; N more are refused
    (429) and counted under `mfa` only."""
    async with (
        started_app(make_settings, migrated_url, metrics_enabled=True) as app,
        client_for(app) as client,
    ):
        with time_machine.travel(START, tick=False):
            user = await mfa_user(client, code_watch)
            before = await refused_counts(client)
            statuses = []
            for _ in range(ACCOUNT_FAILURES + N):
                response = await client.post(
                    "/api/auth/mfa/recovery-codes",
                    json={"code": code_watch.add(wrong(user.code()))},
                    headers=bearer(user.token),
                )
                statuses.append(response.status_code)
            assert statuses == [403] * ACCOUNT_FAILURES + [429] * N
            assert rose(before, await refused_counts(client)) == {"mfa": N}


async def test_challenge_budget_counts_each_refusal_CHK_BF_04(
    migrated_url: str, make_settings, code_watch: CodeWatch
):
    """A challenge whose budget of wrong codes is already used up in the shared limiter (as
    when another node took the 5 wrong codes and its database write of the spent challenge has
    not landed yet): the next code is refused by that budget (401 `mfa_challenge_invalid`)
    and counted once under `mfa_challenge`, for each of N challenges."""
    async with (
        started_app(make_settings, migrated_url, metrics_enabled=True) as app,
        client_for(app) as client,
    ):
        with time_machine.travel(START, tick=False):
            user = await mfa_user(client, code_watch)
            before = await refused_counts(client)
            for _ in range(N):
                mfa_token = await challenge(client, user.email, user.password)
                async with database(app).session_scope() as db:
                    row = await mfa.live_challenge(db, mfa_token, MFA_CHALLENGE)
                assert row is not None
                for _ in range(CHALLENGE_FAILURES):
                    await limiter_for(app).hit(
                        f"mfa-challenge:{row.id}", CHALLENGE_FAILURES, CHALLENGE_WINDOW_SECONDS
                    )
                code = code_watch.add(wrong(user.code()))
                refused = await sign_in_mfa(client, mfa_token, code)
                assert (refused.status_code, refused.json()["error"]) == (
                    401,
                    "mfa_challenge_invalid",
                )
            assert rose(before, await refused_counts(client)) == {"mfa_challenge": N}
