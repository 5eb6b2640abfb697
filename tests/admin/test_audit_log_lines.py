"""Log injection through account data (BI-09, CHK-LG-03): an admin and a user whose stored
email and name carry CR/LF, ANSI escapes, Unicode line breaks and JSON fragments. Every audit
event of a scripted admin session is exactly one formatted line, with no raw control character,
in both log formats; and the audit lines match the audit rows one for one (CHK-LG-01)."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
from admin_helpers import bearer
from fastapi import FastAPI
from sqlalchemy import func, select

from authkeep.audit.models import AuditEvent
from authkeep.config import LogFormat
from authkeep.core.logs import SafeFormatter, escape_control
from authkeep.core.models import utcnow
from authkeep.sessions import service as sessions
from authkeep.users.models import User
from support.secrets_scan import SCAN
from users.identity_helpers import database

FORGED = "\r\n2031-01-01T00:00:00.000+00:00 INFO    authkeep.audit: audit action=admin.setup"
HOSTILE_ADMIN = f'eve{FORGED}\x1b[2K\x1b]0;pwned\x07\x85\u2028"}},{{"level":"ERROR"@evil.example'
HOSTILE_USER = "mallory\n\r\x1b[31m\x9b2J\u2029{}@evil.example"
HOSTILE_NAME = f"Mallory{FORGED}\x1b[8m"[:200]
RAW_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


class Lines(logging.Handler):
    """Formats every record with `SafeFormatter` into a buffer, one write per record."""

    def __init__(self, fmt: LogFormat) -> None:
        super().__init__(level=logging.DEBUG)
        self.setFormatter(SafeFormatter(fmt))
        self.buffer = io.StringIO()
        self.audit_records = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "authkeep.audit":
            self.audit_records += 1
        self.buffer.write(self.format(record) + "\n")


@contextmanager
def captured() -> Iterator[tuple[Lines, Lines]]:
    text, as_json = Lines(LogFormat.TEXT), Lines(LogFormat.JSON)
    root = logging.getLogger()
    root.addHandler(text)
    root.addHandler(as_json)
    try:
        yield text, as_json
    finally:
        root.removeHandler(text)
        root.removeHandler(as_json)


async def hostile_account(app: FastAPI, email: str, role: str) -> tuple[User, str]:
    """Stored as an older release or an import might have stored it: past today's checks."""
    async with database(app).session_scope() as db:
        user = User(
            email=email,
            name=HOSTILE_NAME,
            role=role,
            password_hash=None,
            email_verified_at=utcnow(),
        )
        db.add(user)
        await db.flush()
        token, _ = await sessions.create(
            db, user, app.state.settings, ip="127.0.0.1", user_agent="test"
        )
    return user, SCAN.register(token)


async def audit_count(app: FastAPI) -> int:
    async with database(app).session_scope() as db:
        return int(await db.scalar(select(func.count()).select_from(AuditEvent)) or 0)


async def test_hostile_emails_and_names_stay_one_escaped_line_per_event_BI_09_CHK_LG_03(
    app: FastAPI, client: httpx.AsyncClient
):
    _, boss_token = await hostile_account(app, HOSTILE_ADMIN, "admin")
    victim, _ = await hostile_account(app, HOSTILE_USER, "user")
    auth = bearer(boss_token)
    rows_before = await audit_count(app)
    with captured() as (text, as_json):
        for path in ("disable", "enable", "force-password-reset"):
            response = await client.post(f"/api/admin/users/{victim.id}/{path}", headers=auth)
            assert response.status_code == 200, response.text
        assert (await client.delete(f"/api/admin/users/{victim.id}/sessions", headers=auth)).json()
        listed = await client.get("/api/admin/users", headers=auth)
        assert HOSTILE_USER in [u["email"] for u in listed.json()["users"]]
        audit = await client.get("/api/admin/audit", headers=auth)
        assert audit.json()["events"][0]["detail"]["email"] == HOSTILE_USER
        assert (await client.post("/api/auth/sign-out", headers=auth)).status_code == 204
    events = await audit_count(app) - rows_before
    assert events == 5  # four admin actions and the sign-out; reads write none
    for lines in (text, as_json):
        output = lines.buffer.getvalue()
        assert lines.audit_records == events, "one log record per audit row"
        audit_lines = [line for line in output.split("\n") if "authkeep.audit" in line]
        assert len(audit_lines) == events, "one line per event"
        assert len(output.splitlines()) == len(output.split("\n")) - 1, "no hidden line breaks"
        assert not RAW_CONTROL.search(output.replace("\n", ""))
    assert escape_control(HOSTILE_ADMIN) in text.buffer.getvalue(), "the hostile text did arrive"
    for line in as_json.buffer.getvalue().splitlines():
        assert set(json.loads(line)) == {"time", "level", "logger", "message"}
