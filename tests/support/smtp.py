"""A real SMTP server on loopback (aiosmtpd) that keeps what it receives, for the email tests.

`smtp_mailbox` starts one per test on a free port and stops it afterwards. Configure the app
with `make_settings(smtp_host="127.0.0.1", smtp_port=mailbox.port, smtp_starttls=False)`.
`delay` makes the server answer DATA that many seconds late (a slow mail provider).

aiosmtpd logs every DATA line at DEBUG on `mail.log`. That logger belongs to this test mail
server (the recipient's side), not to authkeep, so the fixture lifts it to INFO while it runs:
the suite's secret scan then checks that *authkeep* never logs a token.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import re
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from support.secrets_scan import SCAN
from support.server import free_port

LINK = re.compile(
    r"(?P<base>https?://[^\s#]+)(?P<path>/(?:reset-password|verify-email))#token=(?P<token>[A-Za-z0-9_-]+)"
)


@dataclass
class Received:
    """One delivered message, parsed, with its envelope recipients."""

    message: EmailMessage
    recipients: list[str]

    @property
    def body(self) -> str:
        content: str = self.message.get_content()
        return content

    def link(self) -> re.Match[str]:
        match = LINK.search(self.body)
        assert match is not None, "no authkeep link in the message"
        return match

    def token(self) -> str:
        """The token in the message's link, registered with the secret scan."""
        return SCAN.register(self.link()["token"])


@dataclass
class Mailbox:
    """The aiosmtpd handler: stores every message it accepts (thread-safe appends)."""

    port: int = 0
    delay: float = 0.0
    messages: list[Received] = field(default_factory=list)
    logins: list[tuple[str, str]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        if self.delay:
            await asyncio.sleep(self.delay)
        raw = envelope.content if isinstance(envelope.content, bytes) else b""
        parsed = message_from_bytes(raw, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        self.messages.append(Received(parsed, list(envelope.rcpt_tos)))
        return "250 Message accepted"

    def authenticate(
        self, server: Any, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        """aiosmtpd authenticator: records every login and accepts it."""
        assert isinstance(auth_data, LoginPassword)
        self.logins.append((auth_data.login.decode(), auth_data.password.decode()))
        return AuthResult(success=True)

    def to(self, address: str) -> list[Received]:
        return [m for m in self.messages if address in m.recipients]

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        """Wait until at least `count` messages arrived; fail after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while len(self.messages) < count:
            assert time.monotonic() < deadline, f"{len(self.messages)} of {count} mails arrived"
            await asyncio.sleep(0.01)
        return list(self.messages)

    def last_token(self, address: str) -> str:
        received = self.to(address)
        assert received, f"no mail to {address}"
        return received[-1].token()


@contextmanager
def running_mailbox(mailbox: Mailbox, **controller_options: Any) -> Iterator[Mailbox]:
    """Serve `mailbox` on a free loopback port (options go to aiosmtpd's SMTP class), with
    the test server's own DEBUG logging off (see the module doc)."""
    server_log = logging.getLogger("mail.log")
    level = server_log.level
    server_log.setLevel(logging.INFO)
    mailbox.port = free_port()
    controller = Controller(
        mailbox, hostname="127.0.0.1", port=mailbox.port, ready_timeout=10, **controller_options
    )
    controller.start()
    try:
        yield mailbox
    finally:
        controller.stop()
        server_log.setLevel(level)


def loopback_tls(directory: Path) -> tuple[ssl.SSLContext, Path]:
    """A server TLS context with a fresh self-signed certificate for 127.0.0.1, and the
    certificate's path (point `SSL_CERT_FILE` at it so clients trust it)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "smtp-cert.pem", directory / "smtp-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    return context, cert_path


@pytest.fixture(name="smtp_mailbox")
def smtp_mailbox_fixture() -> Iterator[Mailbox]:
    """A running SMTP server on 127.0.0.1 for one test. Import `smtp_mailbox_fixture` into a
    test module to use it as `smtp_mailbox`."""
    with running_mailbox(Mailbox()) as mailbox:
        yield mailbox
