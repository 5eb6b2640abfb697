"""The mailer and its configuration (CHK-PW-08, CHK-PS-05, CHK-EN-01): which backend each
configuration gets, what production refuses, STARTTLS and SMTP AUTH against a real aiosmtpd
server, failures that leave the answer unchanged and log no secret, and the development
mailer that prints the link."""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from email_helpers import confirm, forgot, mail_app, make_accounts, request_verification, reset
from fastapi import FastAPI
from identity_helpers import audit_rows, client_for, new_email, started_app, strong_password

from authkeep.app import create_app
from authkeep.core.mailer import LogMailer, SmtpMailer, UnavailableMailer, mailer_for
from authkeep.errors import ConfigError
from support.apps import SqliteTemplates
from support.secrets_scan import SCAN
from support.smtp import (
    LINK,
    Mailbox,
    loopback_tls,
    running_mailbox,
    smtp_mailbox_fixture,  # noqa: F401 (the smtp_mailbox fixture)
)

SECRET_KEY = SCAN.register(secrets.token_urlsafe(48))


def test_each_configuration_gets_its_mailer(make_settings):
    assert isinstance(mailer_for(make_settings()), LogMailer)
    assert isinstance(mailer_for(make_settings(smtp_host="127.0.0.1")), SmtpMailer)
    production = {"env": "production", "secret_key": SECRET_KEY}
    assert isinstance(mailer_for(make_settings(**production)), UnavailableMailer)
    with_url = make_settings(**production, smtp_host="smtp.example", public_url="https://a.example")
    assert isinstance(mailer_for(with_url), SmtpMailer)


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        ({"smtp_host": "smtp.example"}, ["AUTHKEEP_SMTP_HOST", "AUTHKEEP_PUBLIC_URL"]),
        (
            {"require_verified_email": True},
            ["AUTHKEEP_REQUIRE_VERIFIED_EMAIL", "AUTHKEEP_SMTP_HOST"],
        ),
    ],
)
def test_production_refuses_to_start_with_unsafe_mail_settings(
    make_settings, overrides: dict[str, object], names: list[str]
):
    """SMTP without a fixed public URL (links would follow the Host header), or required
    verification that no mail could ever satisfy: the server does not start."""
    settings = make_settings(env="production", secret_key=SECRET_KEY, **overrides)
    with pytest.raises(ConfigError) as refused:
        create_app(settings)
    for name in names:
        assert name in refused.value.detail


@pytest.fixture
async def production_app(
    sqlite_templates: SqliteTemplates, make_settings
) -> AsyncIterator[FastAPI]:
    url = await sqlite_templates.fresh()
    async with started_app(make_settings, url, env="production", secret_key=SECRET_KEY) as app:
        yield app


async def test_production_without_smtp_answers_503_for_every_address(production_app: FastAPI):
    async with client_for(production_app) as client:
        [known] = await make_accounts(production_app, 1)
        answers = [
            await forgot(client, known),
            await forgot(client, new_email("nobody")),
            await request_verification(client, email=known),
            await request_verification(client, email=new_email("nobody")),
        ]
    assert {(a.status_code, a.json()["error"]) for a in answers} == {(503, "email_unavailable")}
    # 5xx bodies carry the request id; everything else is the same.
    bodies = [{k: v for k, v in a.json().items() if k != "request_id"} for a in answers]
    assert bodies[0] == bodies[1]
    assert await audit_rows(production_app, "auth.password.forgot") == []


async def test_development_without_smtp_prints_a_marked_link(
    migrated_url: str, make_settings, caplog: pytest.LogCaptureFixture
):
    """The one place a token is logged on purpose: the DEV-ONLY line of the log mailer. (Its
    token is deliberately not registered with the suite's secret scan.)"""
    async with started_app(make_settings, migrated_url) as app, client_for(app) as client:
        [email] = await make_accounts(app, 1)
        with caplog.at_level(logging.WARNING, logger="authkeep.mail"):
            assert (await forgot(client, email)).status_code == 202
        [line] = [r.getMessage() for r in caplog.records if "DEV-ONLY" in r.getMessage()]
        assert "AUTHKEEP_SMTP_HOST is unset" in line
        assert f"to={email}" in line
        link = LINK.search(line)
        assert link is not None
        assert link["base"] == "http://testserver"
        assert (await reset(client, link["token"], strong_password())).status_code == 200


async def test_starttls_by_default_against_a_tls_server(
    migrated_url: str, make_settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """`AUTHKEEP_SMTP_STARTTLS=true` (the default) upgrades the connection, verifies the
    certificate, then logs in with the configured user; the SMTP password is never logged."""
    context, cert = loopback_tls(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    mailbox = Mailbox()
    smtp_password = SCAN.register(secrets.token_urlsafe(16))
    options = {"tls_context": context, "require_starttls": True}
    with running_mailbox(mailbox, authenticator=mailbox.authenticate, **options):
        async with (
            started_app(
                make_settings,
                migrated_url,
                smtp_host="127.0.0.1",
                smtp_port=mailbox.port,
                smtp_username="mailer",
                smtp_password=smtp_password,
            ) as app,
            client_for(app) as client,
        ):
            [email] = await make_accounts(app, 1)
            assert (await request_verification(client, email=email)).status_code == 202
            assert (await confirm(client, mailbox.last_token(email))).status_code == 200
    assert mailbox.logins == [("mailer", smtp_password)]


async def test_starttls_required_but_not_offered_sends_nothing(
    migrated_url: str, make_settings, smtp_mailbox: Mailbox
):
    """No silent downgrade: a server without STARTTLS gets no message in the clear."""
    async with (
        started_app(
            make_settings, migrated_url, smtp_host="127.0.0.1", smtp_port=smtp_mailbox.port
        ) as app,
        client_for(app) as client,
    ):
        [email] = await make_accounts(app, 1)
        assert (await forgot(client, email)).status_code == 202
        assert smtp_mailbox.messages == []
        [event] = await audit_rows(app, "auth.password.forgot")
        assert event.outcome == "send_failed"


@pytest.fixture
async def unreachable_app(
    migrated_url: str, make_settings, request: pytest.FixtureRequest
) -> AsyncIterator[FastAPI]:
    port: int = request.getfixturevalue(request.param)
    settings = {"smtp_host": "127.0.0.1", "smtp_port": port, "smtp_starttls": False}
    async with started_app(make_settings, migrated_url, **settings) as app:
        app.state.mailer.timeout = 0.5
        yield app


@pytest.mark.parametrize("unreachable_app", ["closed_port", "blackhole_port"], indirect=True)
async def test_an_unreachable_smtp_server_changes_nothing_the_client_sees(
    unreachable_app: FastAPI, caplog: pytest.LogCaptureFixture
):
    """Refused connection or a server that never answers (timeout): still 202 with the usual
    body, the audit row says `send_failed`, and the log line names the error class only."""
    app = unreachable_app
    async with client_for(app) as client:
        [known] = await make_accounts(app, 1)
        with caplog.at_level(logging.WARNING, logger="authkeep.mail"):
            sent = await forgot(client, known)
        unknown = await forgot(client, new_email("nobody"))
    assert sent.status_code == 202
    assert sent.content == unknown.content
    outcomes = [e.outcome for e in await audit_rows(app, "auth.password.forgot")]
    assert outcomes == ["send_failed", "unknown_email"]
    [line] = [r.getMessage() for r in caplog.records if "mail not sent" in r.getMessage()]
    assert "token" not in line
    assert known not in line


async def test_mail_app_helper_sends_plain_text_in_one_line_links(
    migrated_url: str, make_settings, smtp_mailbox: Mailbox
):
    """The link stays on one line in the raw message (7bit), for plain-text mail readers."""
    async with (
        mail_app(
            make_settings, migrated_url, smtp_mailbox, public_url="https://auth.example.com"
        ) as app,
        client_for(app) as client,
    ):
        [email] = await make_accounts(app, 1)
        await forgot(client, email)
        [mail] = smtp_mailbox.to(email)
        token = mail.token()
        assert mail.message["Content-Transfer-Encoding"] == "7bit"
        raw = mail.message.as_string()
        assert f"https://auth.example.com/reset-password#token={token}\n" in raw
        assert mail.message["Auto-Submitted"] == "auto-generated"
        assert mail.message["Message-ID"]
        assert mail.message.get_body(("html",)) is None
