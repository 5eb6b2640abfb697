"""Recovery code digests are keyed with the server secret: 10 characters of a 32-letter
alphabet are 50 bits, few enough to try them all against a plain SHA-256, so a copy of the
database must not be enough to check a guess (the keyed-digest idea of CHK-PS-03, applied to
recovery codes; CHK-CR-04 for the secret). Codes stored in the earlier unkeyed form keep
working, once each, until the user makes new ones. Both engines, through the real API."""

from __future__ import annotations

import hashlib
import uuid

import httpx
import time_machine
from fastapi import FastAPI
from identity_helpers import bearer, database, user_row
from mfa_helpers import (
    START,
    STEP,
    CodeWatch,
    challenge,
    error,
    mfa_user,
    register_recovery_codes,
    sign_in_mfa,
    spend_together,
)
from sqlalchemy import select, update

from authkeep.config import Settings
from authkeep.mfa import crypto
from authkeep.mfa.models import RecoveryCode
from support.secrets_scan import FIGURES

LEGACY_RACE_TRIALS = 10


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def attacker_digests(user_id: uuid.UUID, code: str) -> set[str]:
    """What someone with the database but not the server secret can compute for one candidate
    code: SHA-256 of every plausible arrangement of the user's id and the code."""
    normal = crypto.normalize_recovery_code(code)
    assert normal is not None
    texts = set()
    for spelled in (normal, code, code.upper()):
        for uid in (user_id.hex, str(user_id)):
            texts |= {spelled, f"{uid}:{spelled}", f"{spelled}:{uid}", f"{uid}{spelled}"}
            texts.add(f"{crypto.RECOVERY_DIGEST_LABEL}{uid}:{spelled}")
    return {sha256_hex(text) for text in texts}


async def stored_digests(app: FastAPI, user_id: uuid.UUID) -> set[str]:
    async with database(app).session_scope() as db:
        rows = await db.scalars(
            select(RecoveryCode.code_hash).where(RecoveryCode.user_id == user_id)
        )
        return set(rows.all())


async def make_legacy(app: FastAPI, user_id: uuid.UUID, code: str) -> None:
    """Turn the stored row of `code` into the pre-key form, as an older version wrote it."""
    normal = crypto.normalize_recovery_code(code)
    assert normal is not None
    settings: Settings = app.state.settings
    keyed = crypto.recovery_digest(crypto.recovery_key(settings), user_id, normal)
    async with database(app).session_scope() as db:
        changed = await db.execute(
            update(RecoveryCode)
            .where(RecoveryCode.user_id == user_id, RecoveryCode.code_hash == keyed)
            .values(code_hash=sha256_hex(f"{user_id.hex}:{normal}"))
        )
        assert changed.rowcount == 1  # type: ignore[attr-defined]


async def test_a_database_copy_without_the_server_secret_matches_no_recovery_code(
    app: FastAPI, client: httpx.AsyncClient, migrated_url: str, code_watch: CodeWatch
):
    """The attacker's best case: the stored rows and the very codes (standing in for trying
    all 2**50). Every unkeyed SHA-256 arrangement matches 0 stored digests; with the server
    secret all 10 match, so the check is not vacuous. The codes still sign in."""
    user = await mfa_user(client, code_watch)
    user_id = (await user_row(app, user.email)).id
    stored = await stored_digests(app, user_id)
    assert len(stored) == 10
    guesses = set().union(*(attacker_digests(user_id, c) for c in user.recovery_codes))
    matches = stored & guesses
    assert matches == set()

    key = crypto.recovery_key(app.state.settings)
    keyed = {
        crypto.recovery_digest(key, user_id, crypto.normalize_recovery_code(c) or c)
        for c in user.recovery_codes
    }
    assert keyed == stored
    mfa_token = await challenge(client, user.email, user.password)
    assert (await sign_in_mfa(client, mfa_token, user.recovery_codes[0])).status_code == 200
    engine = "sqlite" if migrated_url.startswith("sqlite") else "postgresql"
    FIGURES.append(
        f"recovery digests {engine}: {len(guesses)} unkeyed SHA-256 candidates for the 10 "
        f"codes match {len(matches)} of {len(stored)} stored digests; keyed: "
        f"{len(keyed & stored)} of {len(stored)}"
    )


async def test_a_legacy_unkeyed_row_signs_in_once_and_only_once(
    app: FastAPI, client: httpx.AsyncClient, code_watch: CodeWatch
):
    """A code stored by an earlier version (plain SHA-256) is accepted at sign-in and spent:
    the second use is refused. New codes replace it with keyed digests only."""
    with time_machine.travel(START, tick=False) as traveller:
        user = await mfa_user(client, code_watch)
        user_id = (await user_row(app, user.email)).id
        old = user.recovery_codes[0]
        await make_legacy(app, user_id, old)

        mfa_token = await challenge(client, user.email, user.password)
        assert (await sign_in_mfa(client, mfa_token, old)).status_code == 200
        again = await challenge(client, user.email, user.password)
        assert error(await sign_in_mfa(client, again, old)) == (401, "invalid_mfa_code")
        status = await client.get("/api/auth/mfa", headers=bearer(user.token))
        assert status.json()["recovery_codes_left"] == 9

        traveller.shift(STEP)  # the confirming code's step is spent
        regenerated = await client.post(
            "/api/auth/mfa/recovery-codes", json={"code": user.code()}, headers=bearer(user.token)
        )
    assert regenerated.status_code == 200, regenerated.text
    fresh = register_recovery_codes(regenerated.json()["recovery_codes"])
    key = crypto.recovery_key(app.state.settings)
    assert await stored_digests(app, user_id) == {
        crypto.recovery_digest(key, user_id, crypto.normalize_recovery_code(c) or c) for c in fresh
    }


async def test_sixteen_concurrent_spends_of_a_legacy_code_succeed_once_FI_RACE_01(
    app: FastAPI, client: httpx.AsyncClient, migrated_url: str, code_watch: CodeWatch
):
    """The legacy form goes through the same conditional UPDATE: 16 units of work spend one
    legacy code at once, exactly one succeeds, in every trial."""
    user = await mfa_user(client, code_watch)
    user_id = (await user_row(app, user.email)).id
    wins = []
    for code in user.recovery_codes[:LEGACY_RACE_TRIALS]:
        await make_legacy(app, user_id, code)
        wins.append(await spend_together(app, user_id, code))
    assert wins == [1] * LEGACY_RACE_TRIALS
    engine = "sqlite" if migrated_url.startswith("sqlite") else "postgresql"
    FIGURES.append(
        f"FI-RACE-01 legacy recovery code (service) {engine}: {LEGACY_RACE_TRIALS} trials x 16 "
        f"concurrent -> exactly 1 accepted in {wins.count(1)}/{LEGACY_RACE_TRIALS}"
    )
