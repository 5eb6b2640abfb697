"""Email verification and password reset by emailed single-use links (CHK-PW-08, CHK-EN-01..03).

Tokens come from `users.one_time`: 256 random bits, only their SHA-256 digest stored, claimed by
one conditional UPDATE so exactly one use succeeds under any concurrency (FI-RACE-01). Links
carry the token in the URL fragment (`/reset-password#token=…`), which browsers never send to a
server or put in a Referer.

Requests that send mail (`forgot`, and a verification request by address) answer before any
account is looked up: the route canonicalises the address, applies the rate limits and queues
the job; the job (`send_reset_mail`, `send_verification_mail`) runs after the response, looks
the account up, issues the token, writes the audit row and talks to SMTP. Known and unknown
addresses therefore get the same status, body and timing, and an SMTP server that takes
200 ms never shows in the response time (CHK-EN-02).

Rate limits are keyed by the canonical address, never by whether it has an account, so they
fire identically for unknown addresses (CHK-EN-03): `MAILS_PER_ACCOUNT_PER_HOUR` (5) per address
and flow per sliding hour, and `AUTHKEEP_LOGIN_IP_FAILURES_PER_MINUTE` mail requests per client
network per minute (a bucket of its own).
"""

from __future__ import annotations

import logging
import re
import uuid
from datetime import timedelta

from fastapi import BackgroundTasks, Request
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from authkeep.audit import service as audit
from authkeep.config import Settings
from authkeep.core.clientip import limiter_key
from authkeep.core.db import Database
from authkeep.core.mailer import Mail, Mailer, MailNotSent
from authkeep.core.metrics import metrics_for
from authkeep.core.models import utcnow
from authkeep.core.ratelimit import limiter_for
from authkeep.core.request_context import request_id, request_ip
from authkeep.core.security import token_digest
from authkeep.errors import AuthkeepError, LimiterUnavailable, RateLimited, ValidationFailed
from authkeep.mfa import service as mfa
from authkeep.users import one_time
from authkeep.users import service as users
from authkeep.users.delays import delay_key, delays_for
from authkeep.users.models import OneTimeToken, User
from authkeep.users.passwords import ensure_not_too_long, hash_password, validate
from authkeep.users.signin import hashing, record_failure

logger = logging.getLogger("authkeep.mail")

MAILS_PER_ACCOUNT_PER_HOUR = 5
ACCOUNT_WINDOW_SECONDS = 3600
NETWORK_WINDOW_SECONDS = 60
RESET_PAGE = "/reset-password"
VERIFY_PAGE = "/verify-email"
RESET = "reset"
VERIFY = "verify"
# A DNS name or a bracketed IPv6 literal, with an optional port: nothing that could carry a
# path, credentials or a second host into a link.
_HOST = re.compile(
    r"^(?:[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?$"
)


class InvalidToken(AuthkeepError):
    """One answer for unknown, used, expired and other-purpose tokens."""

    code = "invalid_token"
    status_code = 400
    detail = (
        "This link is not valid: it was used already, it expired, or it was mistyped. "
        "Ask for a new one."
    )


class EmailUnavailable(AuthkeepError):
    code = "email_unavailable"
    status_code = 503
    detail = "This server cannot send email: its administrator has not configured SMTP."


class EmailAlreadyVerified(AuthkeepError):
    code = "email_already_verified"
    status_code = 409
    detail = "Your email address is already verified."


def mailer(request: Request) -> Mailer:
    chosen: Mailer = request.app.state.mailer
    return chosen


def ensure_mail_available(request: Request) -> None:
    """Production without SMTP: refuse before doing anything (same answer for every address)."""
    if not mailer(request).available:
        raise EmailUnavailable()


def link_base(request: Request, settings: Settings) -> str:
    """Where emailed links point: `AUTHKEEP_PUBLIC_URL`, else this request's scheme and `Host`.

    `X-Forwarded-Host` is never read (BI-05, CHK-CK-06). Production with SMTP refuses to start
    without `AUTHKEEP_PUBLIC_URL` (see `core.mailer`), so a forged `Host` only matters in
    development."""
    if settings.public_url:
        return settings.public_url.rstrip("/")
    host = request.headers.get("host", "")
    if not _HOST.match(host):
        raise ValidationFailed("The Host header is not a valid host name.")
    return f"{request.url.scheme}://{host}"


async def throttle_mail(
    database: Database, request: Request, settings: Settings, flow: str, email: str
) -> None:
    """Count one mail request for this network and this address; raise 429 when either limit
    is used up. Keyed by the address alone, so unknown addresses behave the same (CHK-EN-03)."""
    refusal = await _mail_refusal(database, request, settings, flow, email)
    if refusal is not None:
        limiter, retry_after = refusal
        metrics_for(request.app).refused(limiter)
        raise RateLimited(retry_after, "Too many emails requested. Wait before asking again.")


async def _mail_refusal(
    database: Database, request: Request, settings: Settings, flow: str, email: str
) -> tuple[str, int] | None:
    """Take one mail from the network's and the address's budgets: None when both allow it,
    else (the refusing limiter's metric name, seconds to wait), audited as throttled."""
    limiter = limiter_for(request.app)
    network = f"mail:{limiter_key(request_ip(request))}"
    account = f"mail-{flow}:{token_digest(email)}"
    decision = await limiter.hit(
        network, settings.login_ip_failures_per_minute, NETWORK_WINDOW_SECONDS
    )
    reason = "ip"
    if decision.allowed:
        reason = "account"
        decision = await limiter.hit(account, MAILS_PER_ACCOUNT_PER_HOUR, ACCOUNT_WINDOW_SECONDS)
    if decision.allowed:
        return None
    action = "auth.password.forgot" if flow == RESET else "auth.verify_email.request"
    await record_failure(database, request, action, outcome="throttled", reason=reason, actor=email)
    return ("mail_ip" if reason == "ip" else "mail_address"), decision.retry_after


def _refusal(user: User | None, flow: str) -> str | None:
    """Why no mail goes to this address (recorded in the admin-only audit log)."""
    if user is None:
        return "unknown_email"
    if user.disabled_at is not None:
        return "disabled"
    if flow == VERIFY and user.email_verified_at is not None:
        return "already_verified"
    return None


def reset_mail(email: str, link: str, minutes: int) -> Mail:
    body = (
        f"Someone, hopefully you, asked to reset the password of the authkeep account for "
        f"{email}.\n\nTo choose a new password, open this link within {minutes} minutes:\n\n"
        f"{link}\n\nThe link works once. If you did not ask for this, ignore this message: "
        "your password stays as it is.\n"
    )
    return Mail(to=email, subject="Reset your authkeep password", body=body, link=link)


def verification_mail(email: str, link: str, minutes: int) -> Mail:
    body = (
        f"Confirm that {email} is your email address for authkeep: open this link within "
        f"{minutes} minutes:\n\n{link}\n\nThe link works once. If you did not ask for this, "
        "ignore this message.\n"
    )
    return Mail(to=email, subject="Confirm your email address for authkeep", body=body, link=link)


async def queue_sign_up_verification(
    database: Database,
    request: Request,
    background: BackgroundTasks,
    settings: Settings,
    email: str,
    base_url: str | None,
) -> None:
    """After sign-up, mail a verification link — for new and taken addresses alike, so the
    answer stays the same (the job itself skips verified accounts). Nothing is queued when
    SMTP is unavailable or the address has had its mails for the hour."""
    if base_url is None:
        return
    # Over a mail limit the mail is skipped, not the sign-up: no request was refused, so
    # nothing is counted in the rate-limit metrics (the audit row says throttled).
    if await _mail_refusal(database, request, settings, VERIFY, email) is not None:
        return
    background.add_task(send_verification_mail, request, email, base_url)


async def send_reset_mail(request: Request, email: str, base_url: str) -> None:
    """Background job after `POST /password/forgot`: never raises (see `_run_mail_job`)."""
    await _run_mail_job(request, email, base_url, RESET)


async def send_verification_mail(request: Request, email: str, base_url: str) -> None:
    """Background job after `POST /verify-email/request`: never raises."""
    await _run_mail_job(request, email, base_url, VERIFY)


async def _run_mail_job(request: Request, email: str, base_url: str, flow: str) -> None:
    try:
        await _mail_job(request, email, base_url, flow)
    except Exception as exc:
        # The response is gone: log the class only (driver text can quote parameters).
        logger.error(
            "%s mail job failed (%s) request_id=%s", flow, type(exc).__name__, request_id(request)
        )


async def _mail_job(request: Request, email: str, base_url: str, flow: str) -> None:
    settings: Settings = request.app.state.settings
    database: Database = request.app.state.database
    action = "auth.password.forgot" if flow == RESET else "auth.verify_email.request"
    mail: Mail | None = None
    async with database.session_scope() as db:
        user = await users.get_by_email(db, email)
        refusal = _refusal(user, flow)
        if user is not None and refusal is None:
            mail = await _issue_mail(db, settings, user, base_url, flow)
        event = await audit.record(
            db,
            action,
            "sent" if refusal is None else refusal,
            request=request,
            actor_id=user.id if user else None,
            actor=user.email if user else email,
        )
        await db.flush()
        event_id = event.id
    # Committed first: a link never reaches a mailbox before its token exists.
    if mail is not None:
        await _deliver(request, database, mail, event_id)


async def _issue_mail(
    db: AsyncSession, settings: Settings, user: User, base_url: str, flow: str
) -> Mail:
    if flow == RESET:
        minutes = settings.reset_token_minutes
        token = await one_time.issue(
            db, one_time.RESET_PASSWORD, timedelta(minutes=minutes), user_id=user.id
        )
        return reset_mail(user.email, f"{base_url}{RESET_PAGE}#token={token}", minutes)
    minutes = settings.email_token_minutes
    token = await one_time.issue(
        db, one_time.VERIFY_EMAIL, timedelta(minutes=minutes), user_id=user.id
    )
    return verification_mail(user.email, f"{base_url}{VERIFY_PAGE}#token={token}", minutes)


async def _deliver(request: Request, database: Database, mail: Mail, event_id: uuid.UUID) -> None:
    try:
        await mailer(request).send(mail)
    except MailNotSent as exc:
        logger.warning("mail not sent (%s) request_id=%s", exc, request_id(request))
        async with database.session_scope() as db:
            await users.finish_attempt(db, event_id, "send_failed", {"reason": str(exc)})


async def _token_owner(db: AsyncSession, token: str, purpose: str) -> User | None:
    """The active user an unused, unexpired token of this purpose belongs to (no claim)."""
    row = await db.scalar(
        select(OneTimeToken).where(
            OneTimeToken.token_hash == token_digest(token),
            OneTimeToken.purpose == purpose,
            OneTimeToken.used_at.is_(None),
            OneTimeToken.expires_at > utcnow(),
        )
    )
    if row is None or row.user_id is None:
        return None
    user = await users.get(db, row.user_id)
    return user if user is not None and user.disabled_at is None else None


async def _claim(db: AsyncSession, token: str, purpose: str) -> User:
    """Use the token up (atomic) and return its active user; raise `InvalidToken` otherwise."""
    claimed = await one_time.consume(db, token, purpose)
    user = await users.get(db, claimed.user_id) if claimed and claimed.user_id else None
    if user is None or user.disabled_at is not None:
        raise InvalidToken()
    return user


async def _mark_verified(db: AsyncSession, user_id: uuid.UUID) -> None:
    await db.execute(
        update(User)
        .where(User.id == user_id, User.email_verified_at.is_(None))
        .values(email_verified_at=utcnow())
    )
    await one_time.revoke_unused(db, user_id, one_time.VERIFY_EMAIL)


async def confirm_email(database: Database, request: Request, token: str) -> None:
    """Use a verification token: the account's address counts as verified from now on."""
    action = "auth.verify_email.confirm"
    try:
        async with database.session_scope() as db:
            user = await _claim(db, token, one_time.VERIFY_EMAIL)
            await _mark_verified(db, user.id)
            await audit.record(
                db, action, "success", request=request, actor_id=user.id, actor=user.email
            )
    except InvalidToken:
        await record_failure(database, request, action, reason="invalid_token")
        raise


async def reset_password(
    database: Database, request: Request, settings: Settings, token: str, new_password: str
) -> int:
    """Set a new password with a reset token. The token is checked first (the policy needs the
    account's address), the hash runs with no connection held, then one unit of work claims
    the token and calls `users.set_password`: every session ends, the failure count, the
    progressive sign-in wait and any forced reset clear (so a locked account is usable again at
    once, CHK-BF-03) and other reset links die. Following the link proves the mailbox, so the
    address counts as verified. Returns the number of sessions ended."""
    action = "auth.password.reset"
    ensure_not_too_long(new_password, settings)
    async with database.session_scope() as db:
        owner = await _token_owner(db, token, one_time.RESET_PASSWORD)
        has_mfa = owner is not None and await mfa.is_enabled(db, owner.id)
    if owner is None:
        await record_failure(database, request, action, reason="invalid_token")
        raise InvalidToken()
    validate(new_password, settings, email=owner.email, has_mfa=has_mfa)
    new_hash = await hash_password(hashing(request), new_password)
    try:
        async with database.session_scope() as db:
            user = await _claim(db, token, one_time.RESET_PASSWORD)
            ended = await users.set_password(db, user.id, new_hash)
            await _mark_verified(db, user.id)
            await audit.record(
                db,
                action,
                "success",
                request=request,
                actor_id=user.id,
                actor=user.email,
                detail={"sessions_ended": ended},
            )
    except InvalidToken:
        await record_failure(database, request, action, reason="invalid_token", user=owner)
        raise
    await _end_delay_run(request, settings, user.email)
    return ended


async def _end_delay_run(request: Request, settings: Settings, email: str) -> None:
    """A completed reset also ends the address's progressive sign-in wait, so the owner signs
    in at once (CHK-BF-03). The reset is committed already: if the delay store (Redis) does
    not answer, the wait is left to run out by itself rather than failing the reset."""
    try:
        await delays_for(request.app).clear(delay_key(settings, email))
    except LimiterUnavailable:
        logger.warning(
            "password reset: the sign-in delay store is unavailable, the account's wait (if "
            "any) runs out by itself request_id=%s",
            request_id(request),
        )
