"""After a scripted identity run, every password and token it used appears nowhere except in
the one response that hands it out: not in any other response, not in the logs, and not in any
database column — only their hashed forms are stored (issue "Identity", CHK-PS-05, CHK-LG-02,
CHK-SE-01, CHK-PW-08).
"""

from __future__ import annotations

import logging

import httpx
import pytest
from email_helpers import confirm, forgot, mail_app, reset
from identity_helpers import SAME_ORIGIN, bearer, client_for, new_email, strong_password
from sqlalchemy import select, text

from authkeep.core.db import Database
from authkeep.models import Base
from support.secrets_scan import SCAN
from support.smtp import Mailbox, smtp_mailbox_fixture  # noqa: F401 (the smtp_mailbox fixture)


class Transcript:
    """Every response body of the run, minus the ones whose job is to hand out a secret."""

    def __init__(self) -> None:
        self.bodies: list[tuple[str, str]] = []

    async def call(
        self,
        client: httpx.AsyncClient,
        method: str,
        path: str,
        *,
        hands_out_secret: bool = False,
        **kwargs: object,
    ) -> httpx.Response:
        response = await client.request(method, path, **kwargs)  # type: ignore[arg-type]
        if not hands_out_secret:
            self.bodies.append((f"{method} {path}", response.text))
        return response


async def dump_database(database: Database) -> list[tuple[str, str]]:
    """Every value of every column of every table, as text."""
    rows: list[tuple[str, str]] = []
    async with database.session_scope() as db:
        for table in Base.metadata.sorted_tables:
            for row in (await db.execute(select(table))).all():
                rows.extend((table.name, str(value)) for value in row)
        version = (await db.execute(text("SELECT version_num FROM alembic_version"))).all()
        rows.extend(("alembic_version", str(v[0])) for v in version)
    return rows


async def test_no_secret_of_a_scripted_run_is_stored_or_echoed(
    migrated_url: str, make_settings, smtp_mailbox: Mailbox, caplog: pytest.LogCaptureFixture
):
    secrets: dict[str, str] = {}
    transcript = Transcript()
    caplog.set_level(logging.DEBUG)
    async with mail_app(make_settings, migrated_url, smtp_mailbox) as app, client_for(app) as c:
        email = new_email("scan")
        secrets["password"] = strong_password("scan-first-")
        up = await transcript.call(
            c,
            "POST",
            "/api/auth/sign-up",
            headers=SAME_ORIGIN,
            json={"email": email, "password": secrets["password"]},
        )
        assert up.status_code == 202
        secrets["verify_token"] = SCAN.register(smtp_mailbox.last_token(email))
        assert (await confirm(c, secrets["verify_token"])).status_code == 200

        signed_in = await transcript.call(
            c,
            "POST",
            "/api/auth/sign-in",
            hands_out_secret=True,
            headers=SAME_ORIGIN,
            json={"email": email, "password": secrets["password"]},
        )
        secrets["session_token"] = SCAN.register(signed_in.json()["token"])
        c.cookies.clear()
        auth = bearer(secrets["session_token"])
        assert (await transcript.call(c, "GET", "/api/auth/session", headers=auth)).is_success

        secrets["password2"] = strong_password("scan-second-")
        changed = await transcript.call(
            c,
            "POST",
            "/api/auth/password/change",
            headers=auth,
            json={"current_password": secrets["password"], "new_password": secrets["password2"]},
        )
        assert changed.status_code == 200, changed.text

        assert (await forgot(c, email)).status_code == 202
        secrets["reset_token"] = SCAN.register(smtp_mailbox.last_token(email))
        secrets["password3"] = strong_password("scan-third-")
        assert (await reset(c, secrets["reset_token"], secrets["password3"])).status_code == 200

        again = await transcript.call(
            c,
            "POST",
            "/api/auth/sign-in",
            hands_out_secret=True,
            headers=SAME_ORIGIN,
            json={"email": email, "password": secrets["password3"]},
        )
        secrets["session_token2"] = SCAN.register(again.json()["token"])
        c.cookies.clear()
        out = await transcript.call(
            c, "POST", "/api/auth/sign-out", headers=bearer(secrets["session_token2"])
        )
        assert out.status_code == 204

        stored = await dump_database(app.state.database)

    logs = [record.getMessage() for record in caplog.records]
    hits = [
        (name, where)
        for name, secret in secrets.items()
        for where, haystack in (
            [("db:" + table, value) for table, value in stored]
            + [("log", line) for line in logs]
            + [("response:" + path, body) for path, body in transcript.bodies]
        )
        if secret in haystack
    ]
    assert hits == []
    assert len(stored) > 50
    assert len(logs) > 10
    assert len(transcript.bodies) >= 4
