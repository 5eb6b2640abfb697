"""Email verification and password reset: four JSON routes under `/api/auth` and the two small
pages emailed links open (`/reset-password`, `/verify-email`).

Routes that send mail answer `202` with one fixed body before any account is looked up; the
mail goes out after the response (`BackgroundTasks`). See `users.email_flows` for why.

The pages read the token from the URL fragment with a few lines of inline script and POST it;
the fragment never reaches a server, a log or a Referer. They load nothing from elsewhere, and
a per-response nonce is the only way a script or style runs (strict CSP).
"""

from __future__ import annotations

from typing import Annotated, Literal

import jinja2
from fastapi import APIRouter, BackgroundTasks, Depends, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from authkeep.core.deps import AppDatabase, AppSettings
from authkeep.core.security import new_token
from authkeep.errors import ValidationFailed
from authkeep.sessions.cookies import read_cookie
from authkeep.sessions.deps import bearer_token, current_session
from authkeep.sessions.service import ActiveSession
from authkeep.users import email_flows
from authkeep.users.routes import AuthRoute, ensure_same_site_login
from authkeep.users.schemas import Email, Password, Strict

Token = Annotated[str, Field(min_length=1, max_length=512)]


class PasswordForgot(Strict):
    email: Email


class VerificationRequest(Strict):
    """Signed in: send nothing (the link goes to your own address). Signed out: your address."""

    email: Email | None = None


class TokenConfirm(Strict):
    token: Token


class PasswordReset(Strict):
    token: Token
    new_password: Password


class MailAccepted(BaseModel):
    """The same answer whether or not the address has an account."""

    status: Literal["accepted"] = "accepted"
    detail: str


class EmailVerified(BaseModel):
    status: Literal["verified"] = "verified"


class PasswordResetDone(BaseModel):
    status: Literal["reset"] = "reset"
    sessions_revoked: int


async def optional_session(
    request: Request, database: AppDatabase, settings: AppSettings
) -> ActiveSession | None:
    """The caller's session when it sent a token or cookie (401 if that is not valid, CSRF
    rule for cookies), else None."""
    if bearer_token(request) is None and read_cookie(request) is None:
        return None
    async with database.session_scope() as db:
        return await current_session(request, db, settings)


OptionalSession = Annotated[ActiveSession | None, Depends(optional_session)]

api = APIRouter(prefix="/api/auth", tags=["auth"], route_class=AuthRoute)


@api.post("/password/forgot", status_code=202, response_model=MailAccepted)
async def forgot_password(
    body: PasswordForgot,
    request: Request,
    background: BackgroundTasks,
    database: AppDatabase,
    settings: AppSettings,
) -> MailAccepted:
    """Email a reset link if the address has an account. Same answer, same time, either way."""
    ensure_same_site_login(request, settings)
    email_flows.ensure_mail_available(request)
    base_url = email_flows.link_base(request, settings)
    await email_flows.throttle_mail(database, request, settings, email_flows.RESET, body.email)
    background.add_task(email_flows.send_reset_mail, request, body.email, base_url)
    return MailAccepted(
        detail=(
            "If an account uses this address, we sent it a link to choose a new password. "
            f"The link works once, for {settings.reset_token_minutes} minutes."
        )
    )


@api.post("/password/reset", response_model=PasswordResetDone)
async def reset_password(
    body: PasswordReset, request: Request, database: AppDatabase, settings: AppSettings
) -> PasswordResetDone:
    """Choose a new password with the emailed token. Ends every session of the account."""
    ensure_same_site_login(request, settings)
    ended = await email_flows.reset_password(
        database, request, settings, body.token, body.new_password
    )
    return PasswordResetDone(sessions_revoked=ended)


@api.post("/verify-email/request", status_code=202, response_model=MailAccepted)
async def request_email_verification(
    request: Request,
    background: BackgroundTasks,
    principal: OptionalSession,
    database: AppDatabase,
    settings: AppSettings,
    body: VerificationRequest | None = None,
) -> MailAccepted:
    """Email a verification link: to your own address when signed in, else to `email` if it
    has an unverified account (same answer either way, so it reveals nothing)."""
    email = body.email if body else None
    if principal is not None:
        if email is not None and email != principal.user.email:
            raise ValidationFailed("Signed in, the link goes to your own address: omit 'email'.")
        if principal.user.email_verified_at is not None:
            raise email_flows.EmailAlreadyVerified()
        email = principal.user.email
    else:
        ensure_same_site_login(request, settings)
    if email is None:
        raise ValidationFailed("Send the email address to verify, or sign in.")
    email_flows.ensure_mail_available(request)
    base_url = email_flows.link_base(request, settings)
    await email_flows.throttle_mail(database, request, settings, email_flows.VERIFY, email)
    background.add_task(email_flows.send_verification_mail, request, email, base_url)
    return MailAccepted(
        detail=(
            "If this address has an account that is not verified yet, we sent it a link. "
            f"The link works once, for {settings.email_token_minutes} minutes."
        )
    )


@api.post("/verify-email/confirm", response_model=EmailVerified)
async def confirm_email(
    body: TokenConfirm, request: Request, database: AppDatabase, settings: AppSettings
) -> EmailVerified:
    """Use the emailed verification token: the account's address is verified."""
    ensure_same_site_login(request, settings)
    await email_flows.confirm_email(database, request, body.token)
    return EmailVerified()


pages = APIRouter(include_in_schema=False)
_templates = jinja2.Environment(
    loader=jinja2.PackageLoader("authkeep.users", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)


def page(template: str) -> HTMLResponse:
    """Render a link page with a fresh nonce; nothing but that nonce may run or style it."""
    nonce = new_token(16)
    html = _templates.get_template(template).render(nonce=nonce)
    csp = (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
        "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
    )
    return HTMLResponse(
        html,
        headers={
            "Content-Security-Policy": csp,
            "Referrer-Policy": "no-referrer",
            "X-Content-Type-Options": "nosniff",
            "X-Frame-Options": "DENY",
            "Cache-Control": "no-store",
        },
    )


@pages.get("/reset-password", response_class=HTMLResponse)
async def reset_password_page() -> HTMLResponse:
    """The page reset links open: a new-password form that posts the fragment's token."""
    return page("reset_password.html")


@pages.get("/verify-email", response_class=HTMLResponse)
async def verify_email_page() -> HTMLResponse:
    """The page verification links open: one button that posts the fragment's token."""
    return page("verify_email.html")


router = APIRouter()
router.include_router(api)
router.include_router(pages)
