"""Resetting a user's MFA (an admin action, CHK-AC-06 "every admin action audited"): for a user
who lost the authenticator and the recovery codes, and for every MFA user after
AUTHKEEP_SECRET_KEY changed. The factor and codes go, open challenges and every session end,
one audit row; the user then signs in with the password alone. Through the API (fresh admin
session, not on yourself) and through `authkeep users reset-mfa`. Both engines."""

from __future__ import annotations

import httpx
import time_machine
from admin_helpers import invoke, json_out, on_app, sign_in, signed_in_admin
from fastapi import FastAPI
from identity_helpers import audit_rows, bearer, count_rows, user_row
from mfa_helpers import START, STEP, CodeWatch, challenge, factor_row, mfa_user, sign_in_mfa, totp

from authkeep.mfa.models import RecoveryCode


async def _reset(client: httpx.AsyncClient, token: str, user_id: object) -> httpx.Response:
    return await client.post(f"/api/admin/users/{user_id}/mfa/reset", headers=bearer(token))


async def test_admin_resets_a_users_mfa(app: FastAPI, client: httpx.AsyncClient):
    watch = CodeWatch()
    with time_machine.travel(START, tick=False) as traveller:
        user = await mfa_user(client, watch)
        target = await user_row(app, user.email)
        open_challenge = await challenge(client, user.email, user.password)
        _, _, admin_token = await signed_in_admin(app, client)

        reset = await _reset(client, admin_token, target.id)
        assert reset.status_code == 200, reset.text
        assert reset.json()["changed"] is True
        assert reset.json()["sessions_ended"] >= 1

        # Everything of the old factor is gone, and so is every way in it had opened.
        assert await factor_row(app, user.email) is None
        assert await count_rows(app, RecoveryCode, RecoveryCode.user_id == target.id) == 0
        session = await client.get("/api/auth/session", headers=bearer(user.token))
        assert session.status_code == 401
        traveller.shift(STEP)
        late = await sign_in_mfa(client, open_challenge, watch.add(totp(user.secret).now()))
        assert late.status_code == 401, late.text

        # The password alone signs in now: a session, no MFA challenge.
        client.cookies.clear()
        signed_in = await sign_in(client, user.email, user.password)
        assert signed_in.status_code == 200, signed_in.text
        assert "token" in signed_in.json()

        rows = await audit_rows(app, "admin.user.mfa_reset")
        assert [(row.target, row.outcome) for row in rows] == [(str(target.id), "success")]
        ended = reset.json()["sessions_ended"]
        assert rows[0].detail == {"email": user.email, "changed": True, "sessions_ended": ended}

        # Again: nothing left to take away, said so.
        again = await _reset(client, admin_token, target.id)
        assert again.status_code == 200
        assert again.json()["changed"] is False
    assert watch.leaks() == []


async def test_mfa_reset_is_refused_on_yourself_and_without_a_fresh_session(
    app: FastAPI, client: httpx.AsyncClient
):
    with time_machine.travel(START, tick=False) as traveller:
        email, _, admin_token = await signed_in_admin(app, client)
        me = await user_row(app, email)
        own = await _reset(client, admin_token, me.id)
        assert (own.status_code, own.json()["error"]) == (409, "cannot_target_self")

        traveller.shift(60 * (app.state.settings.session_fresh_minutes + 1))
        stale = await _reset(client, admin_token, me.id)
        assert (stale.status_code, stale.json()["error"]) == (403, "reauth_required")
    assert await audit_rows(app, "admin.user.mfa_reset") == []


def test_cli_reset_mfa(migrated_url: str, make_settings):
    watch = CodeWatch()

    async def enrolled(app: FastAPI, client: httpx.AsyncClient) -> tuple[str, str, str]:
        user = await mfa_user(client, watch)
        return user.email, user.password, user.token

    email, password, token = on_app(make_settings, migrated_url, enrolled)
    result = invoke("users", "reset-mfa", email, "--json", env={"DATABASE_URL": migrated_url})
    assert result.exit_code == 0, result.output
    out = json_out(result)
    assert (out["ok"], out["email"], out["changed"]) == (True, email, True)
    assert out["sessions_ended"] == 1

    async def after(app: FastAPI, client: httpx.AsyncClient) -> tuple[int, int, object, list]:
        old = await client.get("/api/auth/session", headers=bearer(token))
        client.cookies.clear()
        signed_in = await sign_in(client, email, password)
        rows = await audit_rows(app, "admin.user.mfa_reset")
        return old.status_code, signed_in.status_code, await factor_row(app, email), rows

    old_status, sign_in_status, factor, rows = on_app(make_settings, migrated_url, after)
    assert (old_status, sign_in_status, factor) == (401, 200, None)
    assert [row.actor for row in rows] == ["cli"]

    unknown = invoke("users", "reset-mfa", "nobody@example.com", env={"DATABASE_URL": migrated_url})
    assert unknown.exit_code == 1
    assert watch.leaks() == []
