"""Outgoing mail: one small `Mailer` protocol and the backends `create_app` chooses from settings.

- `SmtpMailer`: `AUTHKEEP_SMTP_HOST` is set. Sends with aiosmtplib, with a timeout on the
  connection and on every command. `AUTHKEEP_SMTP_STARTTLS=true` (the default) requires STARTTLS;
  port 465 means implicit TLS (SMTPS, RFC 8314) whatever that setting says. Certificates are
  verified.
- `LogMailer`: development without SMTP. Nothing is sent; each message's link is written to
  the log in one line marked `DEV-ONLY`, so a developer can follow it. This is the only place
  authkeep ever logs a token.
- `UnavailableMailer`: production without SMTP. The email routes answer `503 email_unavailable`.

`mailer_for` also refuses two production configurations at start (ConfigError): SMTP without
`AUTHKEEP_PUBLIC_URL` (links would be built from the request's Host header, which anyone can
set: reset-link poisoning), and `AUTHKEEP_REQUIRE_VERIFIED_EMAIL` without SMTP (nobody could
ever verify, so new users could never sign in).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from typing import Protocol

import aiosmtplib

from authkeep.config import Settings
from authkeep.errors import ConfigError

logger = logging.getLogger("authkeep.mail")

SMTP_TIMEOUT_SECONDS = 10.0
IMPLICIT_TLS_PORT = 465
MAX_7BIT_LINE = 998


@dataclass(frozen=True)
class Mail:
    """One plain-text message. `link` is the single action link inside `body`, kept apart so
    the dev mailer can print it on one line."""

    to: str
    subject: str
    body: str
    link: str | None = None


class Mailer(Protocol):
    """What the email flows need: can this node send mail, and send one message."""

    @property
    def available(self) -> bool: ...

    async def send(self, mail: Mail) -> None: ...


class MailNotSent(Exception):
    """The SMTP server could not be reached or refused the message. Carries no message text."""


def build_message(mail: Mail, sender: str) -> EmailMessage:
    """The MIME message: fixed headers, a plain-text body, no HTML."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = mail.to
    message["Subject"] = mail.subject
    message["Date"] = formatdate(localtime=False)
    domain = parseaddr(sender)[1].rpartition("@")[2] or "localhost"
    message["Message-ID"] = make_msgid(domain=domain)
    message["Auto-Submitted"] = "auto-generated"
    # 7bit keeps the link on one line for plain-text readers (RFC 5322 allows 998 octets);
    # anything else lets the library pick quoted-printable or base64.
    plain = mail.body.isascii() and all(
        len(line) <= MAX_7BIT_LINE for line in mail.body.splitlines()
    )
    message.set_content(mail.body, cte="7bit" if plain else None)
    return message


@dataclass
class SmtpMailer:
    """Sends through `AUTHKEEP_SMTP_HOST`; one connection per message."""

    settings: Settings
    timeout: float = SMTP_TIMEOUT_SECONDS
    sent: int = 0

    @property
    def available(self) -> bool:
        return True

    async def send(self, mail: Mail) -> None:
        """Deliver to the SMTP server; raises `MailNotSent` (never with the message text)."""
        settings = self.settings
        implicit_tls = settings.smtp_port == IMPLICIT_TLS_PORT
        password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
        try:
            await aiosmtplib.send(
                build_message(mail, settings.smtp_from),
                hostname=settings.smtp_host,
                port=settings.smtp_port,
                username=settings.smtp_username,
                password=password,
                use_tls=implicit_tls,
                start_tls=settings.smtp_starttls and not implicit_tls,
                timeout=self.timeout,
            )
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            # The class name only: server replies can quote the recipient or the message.
            raise MailNotSent(type(exc).__name__) from None
        self.sent += 1


@dataclass
class LogMailer:
    """Development only: writes the link to the log instead of sending (no SMTP configured)."""

    sent: int = 0

    @property
    def available(self) -> bool:
        return True

    async def send(self, mail: Mail) -> None:
        self.sent += 1
        logger.warning(
            "DEV-ONLY mail, not sent (AUTHKEEP_SMTP_HOST is unset): to=%s subject=%r link=%s",
            mail.to,
            mail.subject,
            mail.link or "(none)",
        )


@dataclass
class UnavailableMailer:
    """Production without SMTP: email routes answer 503 `email_unavailable`."""

    @property
    def available(self) -> bool:
        return False

    async def send(self, mail: Mail) -> None:
        raise MailNotSent("no SMTP server is configured")


def mailer_for(settings: Settings) -> Mailer:
    """The mailer these settings call for (see the module doc); raises `ConfigError` for the
    two production configurations that cannot work safely."""
    if settings.smtp_host:
        if settings.is_production and not settings.public_url:
            raise ConfigError(
                "AUTHKEEP_SMTP_HOST is set but AUTHKEEP_PUBLIC_URL is not. In production, "
                "emailed links must use a fixed address: set AUTHKEEP_PUBLIC_URL."
            )
        return SmtpMailer(settings)
    if not settings.is_production:
        return LogMailer()
    if settings.require_verified_email:
        raise ConfigError(
            "AUTHKEEP_REQUIRE_VERIFIED_EMAIL is true but AUTHKEEP_SMTP_HOST is not set: nobody "
            "could verify an address. Configure SMTP or turn the requirement off."
        )
    logger.warning(
        "AUTHKEEP_SMTP_HOST is not set: email verification and password reset answer 503 "
        "email_unavailable until SMTP is configured."
    )
    return UnavailableMailer()
