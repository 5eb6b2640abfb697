"""Helpers for the MFA tests: enrol and confirm through the real API, compute codes with a real
pyotp TOTP from the secret the API returned, and keep every secret out of logs and bodies.

Seeds, recovery codes, challenge and session tokens are registered with the suite-wide
`SCAN`. Six-digit TOTP codes are not: a fixed six-digit string turns up by chance inside the
suite's many logged UUIDs and request ids, so a suite-wide substring scan would fail at random.
They are checked by `CodeWatch` instead, in the texts recorded during the test, as whole
numbers (not inside a longer run of letters or digits).
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import httpx
import pyotp
from fastapi import FastAPI
from identity_helpers import audit_rows, bearer, database, new_user, sign_in, user_row
from sqlalchemy import select

from authkeep.audit.models import AuditEvent
from authkeep.mfa import service as mfa
from authkeep.mfa.models import MfaFactor
from support.secrets_scan import SCAN

# 10 s into a 30-second step, so ±1 step is always a whole step away.
START = datetime(2031, 5, 6, 12, 0, 10, tzinfo=UTC)
STEP = timedelta(seconds=30)
RECOVERY_FORMAT = re.compile(r"[0-9a-hjkmnp-tv-z]{5}-[0-9a-hjkmnp-tv-z]{5}")
MFA_ACTIONS = (
    "auth.mfa.enroll",
    "auth.mfa.confirm",
    "auth.mfa.disable",
    "auth.mfa.recovery_codes",
    "auth.sign_in.mfa",
)


@dataclass
class CodeWatch:
    """TOTP codes used by one test, checked at the end against what was logged meanwhile."""

    start: int = field(default_factory=lambda: len(SCAN.texts))
    codes: set[str] = field(default_factory=set)

    def add(self, code: str) -> str:
        self.codes.add(code)
        return code

    def leaks(self) -> list[str]:
        if not self.codes:
            return []
        pattern = re.compile(
            r"(?<![0-9A-Za-z])(?:" + "|".join(sorted(self.codes)) + r")(?![0-9A-Za-z])"
        )
        return [where for where, text in SCAN.texts[self.start :] if pattern.search(text)]


def totp(secret: str) -> pyotp.TOTP:
    return pyotp.TOTP(secret)


def register_recovery_codes(codes: list[str]) -> list[str]:
    for code in codes:
        SCAN.register(code)
        SCAN.register(code.replace("-", ""))
    return codes


@dataclass
class MfaUser:
    email: str
    password: str
    token: str  # the session that enrolled
    secret: str
    recovery_codes: list[str]
    watch: CodeWatch

    def code(self, at: datetime | None = None) -> str:
        """The code for `at` (default: now, as time-machine sees it)."""
        generator = totp(self.secret)
        return self.watch.add(generator.at(at) if at else generator.now())


async def enrol(client: httpx.AsyncClient, token: str) -> httpx.Response:
    response = await client.post("/api/auth/mfa/totp/enroll", headers=bearer(token))
    if response.status_code == 201:
        SCAN.register(response.json()["secret"])
    else:
        SCAN.record("enroll response", response.text)
    return response


async def confirm(client: httpx.AsyncClient, token: str, code: str) -> httpx.Response:
    response = await client.post(
        "/api/auth/mfa/totp/confirm", json={"code": code}, headers=bearer(token)
    )
    if response.status_code == 200:
        register_recovery_codes(response.json()["recovery_codes"])
    else:
        SCAN.record("confirm response", response.text)
    return response


async def mfa_user(
    client: httpx.AsyncClient,
    watch: CodeWatch,
    email: str | None = None,
    password: str | None = None,
) -> MfaUser:
    """Sign up, sign in, enrol and confirm TOTP through the API. The client's cookie jar is
    left empty; `token` is the enrolling session's bearer token."""
    email, password, token = await new_user(client, email, password)
    client.cookies.clear()
    enrolled = await enrol(client, token)
    assert enrolled.status_code == 201, enrolled.text
    secret = enrolled.json()["secret"]
    confirmed = await confirm(client, token, watch.add(totp(secret).now()))
    assert confirmed.status_code == 200, confirmed.text
    return MfaUser(email, password, token, secret, confirmed.json()["recovery_codes"], watch)


async def challenge(client: httpx.AsyncClient, email: str, password: str) -> str:
    """Sign in with the password; returns the MFA challenge token (registered with SCAN)."""
    client.cookies.clear()
    response = await sign_in(client, email, password)
    body = response.json()
    assert response.status_code == 200, response.text
    assert body == {"mfa_required": True, "mfa_token": body["mfa_token"]}
    return str(body["mfa_token"])


async def sign_in_mfa(
    client: httpx.AsyncClient,
    mfa_token: str,
    code: str,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    response = await client.post(
        "/api/auth/sign-in/mfa", json={"mfa_token": mfa_token, "code": code}, headers=headers
    )
    if response.status_code == 200:
        SCAN.register(response.json()["token"])
    else:
        SCAN.record("sign-in/mfa response", response.text)
    return response


def error(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json().get("error", "")


async def factor_row(app: FastAPI, email: str) -> MfaFactor | None:
    user = await user_row(app, email)
    async with database(app).session_scope() as db:
        return await db.scalar(select(MfaFactor).where(MfaFactor.user_id == user.id))


async def mfa_audit(app: FastAPI) -> list[AuditEvent]:
    """Every MFA audit row, recorded into the secret scan (their text must hold no secret)."""
    rows: list[AuditEvent] = []
    for action in MFA_ACTIONS:
        rows.extend(await audit_rows(app, action))
    for row in rows:
        SCAN.record(f"audit {row.action}", f"{row.actor} {row.target} {row.detail}")
    return rows


async def released_together(count: int, attempt: Callable[[int], Awaitable[int]]) -> Counter[int]:
    """Start `count` attempts that wait on one gate, open it, and count their statuses."""
    gate = asyncio.Event()

    async def gated(index: int) -> int:
        await gate.wait()
        return await attempt(index)

    tasks = [asyncio.create_task(gated(i)) for i in range(count)]
    await asyncio.sleep(0)
    gate.set()
    return Counter(await asyncio.gather(*tasks))


async def spend_together(app: FastAPI, user_id: uuid.UUID, code: str, count: int = 16) -> int:
    """`count` units of work spend one recovery code at once (`released_together`); how many
    succeeded."""
    settings = app.state.settings

    async def attempt(_index: int) -> int:
        async with database(app).session_scope() as db:
            return int(await mfa.use_recovery_code(db, user_id, code, settings))

    return (await released_together(count, attempt))[1]
