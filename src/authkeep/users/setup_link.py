"""First-run setup link: the way to the first admin on a fresh standalone server.

When a standalone development server starts and no admin who can sign in exists, it issues a
one-time token (`AUTHKEEP_SETUP_LINK_MINUTES`, 60 by default), revokes older unused ones, and
prints one line to stderr:

    First run: create the admin at http://127.0.0.1:8080/admin/setup#token=…
    (valid 60 minutes, works once)          [one line in reality]

This is the one place authkeep prints a secret on purpose. It goes through `print` to stderr
and never through logging, so no log handler, shipper or file sees it; the token sits in the
URL fragment, which browsers never send to a server, so access logs do not see it either.
`GET /admin/setup` is a small page (strict CSP with a nonce, no external resources) that reads
the fragment, clears it from the address bar and posts `{token, email, password}` to
`POST /api/admin/setup`. That creates the admin (email verified) and answers 201; it does not
sign in. The token is consumed in the same unit of work that creates the admin, by one
conditional UPDATE, so of any number of concurrent attempts exactly one succeeds (FI-RACE-01);
a refused attempt (bad password, email taken) leaves the token usable. The token is a token,
not a password: it can never become the admin's password (CHK-PW-07).

Production nodes never print a link and do not serve these routes: operators run
`authkeep users create-admin`. Worker processes (`--workers` above 1) print no link either,
since each would revoke the one the previous worker printed; they log how to create the admin.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import sys
from datetime import timedelta
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from authkeep.audit import service as audit
from authkeep.config import Role, Settings, resolve_role
from authkeep.core.db import Database
from authkeep.core.deps import AppDatabase, AppSettings
from authkeep.core.models import utcnow
from authkeep.core.security import new_token, same_secret, token_digest
from authkeep.errors import AuthkeepError, Conflict
from authkeep.sessions.deps import ADMIN_ROLE
from authkeep.users import admin, one_time
from authkeep.users import service as users
from authkeep.users.models import OneTimeToken, User
from authkeep.users.passwords import PasswordRejected, hash_password, normalize, validate
from authkeep.users.routes import AuthRoute, ensure_same_site_login
from authkeep.users.schemas import Email, Password, Strict, UserRead
from authkeep.users.signin import hashing

logger = logging.getLogger("authkeep.setup")
PAGE_PATH = "/admin/setup"
TEMPLATE = "templates/admin_setup.html"


class InvalidSetupToken(AuthkeepError):
    code = "invalid_token"
    status_code = 400
    detail = (
        "This setup link is not valid: it expired, was used, or a newer one replaced it. "
        "Restart the server for a new link, or run `authkeep users create-admin`."
    )


class AdminExists(Conflict):
    code = "admin_exists"
    detail = "An admin already exists: sign in, or run `authkeep users create-admin`."


class AdminSetup(Strict):
    token: Annotated[str, Field(min_length=1, max_length=128)]
    email: Email
    password: Password


class AdminCreated(BaseModel):
    status: str = "created"
    detail: str = "The admin exists now. Sign in with this email and password."
    user: UserRead


def prints_link(settings: Settings) -> bool:
    """Only a standalone development server prints a setup link."""
    return resolve_role(settings) is Role.STANDALONE and not settings.is_production


def in_worker_process() -> bool:
    """True in a worker that uvicorn spawned for `--workers` above 1."""
    return multiprocessing.parent_process() is not None


def setup_url(settings: Settings, token: str) -> str:
    if settings.public_url:
        base = settings.public_url.rstrip("/")
    else:
        host = settings.bind_host
        host = "127.0.0.1" if host in {"0.0.0.0", "::"} else host  # noqa: S104
        netloc = f"[{host}]" if ":" in host else host
        base = f"http://{netloc}:{settings.port}"
    return f"{base}{PAGE_PATH}#token={token}"


async def issue_setup_token(db: AsyncSession, settings: Settings) -> str | None:
    """A fresh setup token, older unused ones revoked; None when an admin exists."""
    if await admin.has_admin(db):
        return None
    await revoke_setup_tokens(db)
    return await one_time.issue(
        db, one_time.ADMIN_SETUP, timedelta(minutes=settings.setup_link_minutes)
    )


async def revoke_setup_tokens(db: AsyncSession) -> None:
    await db.execute(
        update(OneTimeToken)
        .where(OneTimeToken.purpose == one_time.ADMIN_SETUP, OneTimeToken.used_at.is_(None))
        .values(used_at=utcnow())
    )


async def announce_setup_link(app: FastAPI) -> None:
    """At start-up (after the database opened): print the setup link if no admin exists.

    Best effort: a database that does not answer within `AUTHKEEP_HEALTH_DB_TIMEOUT`, or any
    other problem, is logged (without the token) and the server starts anyway."""
    settings: Settings = app.state.settings
    if not prints_link(settings):
        return
    database: Database = app.state.database
    worker = in_worker_process()
    try:
        async with asyncio.timeout(settings.health_db_timeout), database.session_scope() as db:
            token = None if worker else await issue_setup_token(db, settings)
            missing = token is not None or not await admin.has_admin(db)
    except Exception as exc:  # the server must start even when this check cannot run
        logger.warning(
            "Could not check for an admin at start-up (%s); run `authkeep users create-admin` "
            "or restart once the database answers.",
            type(exc).__name__,
        )
        return
    if token is not None:
        # print, not logging: the one deliberate secret output must never reach a log handler.
        print(
            f"First run: create the admin at {setup_url(settings, token)} "
            f"(valid {settings.setup_link_minutes} minutes, works once)",
            file=sys.stderr,
            flush=True,
        )
    elif worker and missing:
        # Each worker would revoke the link the previous one printed: no link here.
        logger.warning(
            "No admin exists yet. With several workers no setup link is printed: run "
            "`authkeep users create-admin --email …`, or start once with one worker."
        )


async def _token_usable(db: AsyncSession, token: str) -> bool:
    found = await db.scalar(
        select(OneTimeToken.id).where(
            OneTimeToken.token_hash == token_digest(token),
            OneTimeToken.purpose == one_time.ADMIN_SETUP,
            OneTimeToken.used_at.is_(None),
            OneTimeToken.expires_at > utcnow(),
        )
    )
    return found is not None


def check_password(body: AdminSetup, settings: Settings) -> None:
    """The policy, plus: the setup token is not a password (CHK-PW-07)."""
    if same_secret(normalize(body.password).strip().casefold(), body.token.casefold()):
        raise PasswordRejected(
            "password_context", "The setup link's token cannot be a password: choose your own."
        )
    validate(body.password, settings, email=body.email, context=[body.token])


async def complete_setup(
    database: Database, request: Request, settings: Settings, body: AdminSetup
) -> User:
    """Create the first admin with a setup token (see the module doc). Checks that cost
    nothing come first, so a wrong token never costs an argon2 hash."""
    ensure_same_site_login(request, settings)
    check_password(body, settings)
    try:
        return await _create_first_admin(database, request, body)
    except (InvalidSetupToken, AdminExists, users.EmailTaken) as exc:
        async with database.session_scope() as db:
            await audit.record(
                db,
                "admin.setup",
                "failure",
                request=request,
                actor=body.email,
                detail={"reason": exc.code},
            )
        raise


async def _create_first_admin(database: Database, request: Request, body: AdminSetup) -> User:
    async with database.session_scope() as db:
        if not await _token_usable(db, body.token):
            raise InvalidSetupToken()
        if await admin.has_admin(db):
            raise AdminExists()
    password_hash = await hash_password(hashing(request), body.password)
    async with database.session_scope() as db:
        # Any refusal below rolls back, so the token stays usable for a corrected attempt.
        if await one_time.consume(db, body.token, one_time.ADMIN_SETUP) is None:
            raise InvalidSetupToken()
        if await admin.has_admin(db):
            raise AdminExists()
        user = await users.create_user(
            db, body.email, password_hash=password_hash, role=ADMIN_ROLE, email_verified=True
        )
        await revoke_setup_tokens(db)
        await audit.record(
            db,
            "admin.setup",
            "success",
            request=request,
            actor_id=user.id,
            actor=user.email,
            target=str(user.id),
            detail={"email": user.email},
        )
    return user


page_router = APIRouter(include_in_schema=False)
router = APIRouter(prefix="/api/admin", tags=["admin"], route_class=AuthRoute)


def _page(settings: Settings, nonce: str) -> str:
    text = resources.files("authkeep.users").joinpath(TEMPLATE).read_text("utf-8")
    return text.replace("__NONCE__", nonce).replace(
        "__MIN_LENGTH__", str(settings.password_min_length)
    )


@page_router.get(PAGE_PATH, response_class=HTMLResponse)
async def read_setup_page(settings: AppSettings) -> HTMLResponse:
    """The setup page. Everything it runs is inline with a per-response nonce."""
    nonce = new_token(18)
    policy = (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
        "connect-src 'self'; img-src 'none'; form-action 'none'; frame-ancestors 'none'; "
        "base-uri 'none'"
    )
    headers = {
        "Content-Security-Policy": policy,
        "Cache-Control": "no-store",
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
    }
    return HTMLResponse(_page(settings, nonce), headers=headers)


@router.post("/setup", status_code=201, response_model=AdminCreated)
async def create_first_admin(
    body: AdminSetup, request: Request, database: AppDatabase, settings: AppSettings
) -> AdminCreated:
    """Create the first admin with the setup link's token. Does not sign in."""
    user = await complete_setup(database, request, settings, body)
    return AdminCreated(user=UserRead.of(user))
