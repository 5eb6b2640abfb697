"""Email verification and password reset end to end, through a real SMTP server (aiosmtpd) on
both engines (CHK-PW-08, CHK-PW-09, CHK-BF-03, BI-05): the token is read from the received
message's link, exactly as a user would follow it."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import time_machine
from email_helpers import (
    confirm,
    forgot,
    mail_app,
    make_accounts,
    request_verification,
    reset,
    signed_up_user,
)
from fastapi import FastAPI
from identity_helpers import (
    SAME_ORIGIN,
    audit_rows,
    bearer,
    client_for,
    new_email,
    sign_in,
    sign_up,
    strong_password,
    user_row,
)

from support.secrets_scan import SCAN
from support.smtp import Mailbox, smtp_mailbox_fixture  # noqa: F401 (the smtp_mailbox fixture)

START = datetime(2031, 5, 4, 9, 0, tzinfo=UTC)


@pytest.fixture
async def mail_client(
    migrated_url: str, make_settings, smtp_mailbox: Mailbox
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    async with mail_app(make_settings, migrated_url, smtp_mailbox) as app, client_for(app) as c:
        yield app, c


async def test_reset_flow_end_to_end_CHK_PW_08_CHK_PW_09(
    mail_client: tuple[FastAPI, httpx.AsyncClient], smtp_mailbox: Mailbox
):
    """Forgot → mail with a fragment link → reset: old password fails, new works, every old
    session is 401 on its very next request, the mail carries no other secret."""
    app, client = mail_client
    email, old_password, first = await signed_up_user(client, smtp_mailbox)
    client.cookies.clear()  # a sign-in ends the session whose cookie it carries
    second = (await sign_in(client, email, old_password)).json()["token"]
    client.cookies.clear()

    accepted = await forgot(client, email.upper())
    assert accepted.status_code == 202
    assert accepted.json()["status"] == "accepted"
    [mail] = smtp_mailbox.to(email)
    token = mail.token()
    assert mail.message["Subject"] == "Reset your authkeep password"
    assert mail.message["To"] == email
    assert mail.message["From"] == app.state.settings.smtp_from
    assert mail.message.get_content_type() == "text/plain"
    assert mail.link()["base"] == "http://testserver"
    assert mail.link()["path"] == "/reset-password"
    assert len(token) >= 43  # 256 bits, base64url

    new_password = strong_password("amber-lantern-")
    done = await reset(client, token, new_password)
    assert done.status_code == 200, done.text
    assert done.json() == {"status": "reset", "sessions_revoked": 2}
    for old in (first, second):
        assert (await client.get("/api/auth/session", headers=bearer(old))).status_code == 401
    assert (await sign_in(client, email, old_password)).status_code == 401
    assert (await sign_in(client, email, new_password)).status_code == 200
    # Following the link proved the mailbox.
    assert (await user_row(app, email)).email_verified_at is not None
    assert [e.outcome for e in await audit_rows(app, "auth.password.forgot")] == ["sent"]
    assert [e.outcome for e in await audit_rows(app, "auth.password.reset")] == ["success"]


async def test_reset_refuses_a_weak_password_and_keeps_the_token(
    mail_client: tuple[FastAPI, httpx.AsyncClient], smtp_mailbox: Mailbox
):
    _app, client = mail_client
    [email] = await make_accounts(_app, 1)
    await forgot(client, email)
    token = smtp_mailbox.last_token(email)
    weak = await reset(client, token, SCAN.register("password12345678"))
    assert (weak.status_code, weak.json()["error"]) == (422, "password_common")
    assert (await reset(client, token, strong_password())).status_code == 200


async def test_every_bad_token_gets_the_same_400_CHK_PW_08(
    mail_client: tuple[FastAPI, httpx.AsyncClient], smtp_mailbox: Mailbox
):
    """Used, expired, unknown and other-purpose tokens: one status and one body."""
    app, client = mail_client
    [email] = await make_accounts(app, 1)
    other, _password, session = await signed_up_user(client, smtp_mailbox)
    client.cookies.clear()
    await forgot(client, email)
    await forgot(client, email)
    used_reset, _other_reset = (m.token() for m in smtp_mailbox.to(email))
    assert (await request_verification(client, headers=bearer(session))).status_code == 202
    verify_token = smtp_mailbox.last_token(other)
    assert (await reset(client, used_reset, strong_password())).status_code == 200

    unknown = SCAN.register(secrets.token_urlsafe(32))
    answers = [
        await reset(client, used_reset, strong_password()),
        await reset(client, _other_reset, strong_password()),  # voided by the reset
        await reset(client, unknown, strong_password()),
        await reset(client, verify_token, strong_password()),  # other purpose
        await confirm(client, used_reset),  # other purpose
        await confirm(client, unknown),
    ]
    assert {(a.status_code, a.content) for a in answers} == {(400, answers[0].content)}, [
        a.text for a in answers
    ]
    assert answers[0].json()["error"] == "invalid_token"
    # The verification token was not spent by being tried at the wrong route.
    assert (await confirm(client, verify_token)).status_code == 200
    assert (await confirm(client, verify_token)).content == answers[0].content
    reasons = {
        (e.outcome, (e.detail or {}).get("reason"))
        for e in await audit_rows(app, "auth.password.reset")
    }
    assert reasons == {("success", None), ("failure", "invalid_token")}


@pytest.mark.parametrize("flow", ["reset", "verify"])
async def test_token_expiry_boundary_plus_minus_one_second_CHK_PW_08(
    migrated_url: str, make_settings, smtp_mailbox: Mailbox, flow: str
):
    """A token works 1 s before its expiry and is refused 1 s after."""
    async with mail_app(make_settings, migrated_url, smtp_mailbox) as app, client_for(app) as c:
        settings = app.state.settings
        minutes = settings.reset_token_minutes if flow == "reset" else settings.email_token_minutes
        second = timedelta(seconds=1)
        with time_machine.travel(START, tick=False) as traveller:
            early, late = await make_accounts(app, 2)
            for email in (early, late):
                if flow == "reset":
                    assert (await forgot(c, email)).status_code == 202
                else:
                    assert (await request_verification(c, email=email)).status_code == 202
            tokens = {e: smtp_mailbox.last_token(e) for e in (early, late)}

            async def use(token: str) -> httpx.Response:
                if flow == "reset":
                    return await reset(c, token, strong_password())
                return await confirm(c, token)

            traveller.shift(timedelta(minutes=minutes) - second)
            assert (await use(tokens[early])).status_code == 200
            traveller.shift(2 * second)
            expired = await use(tokens[late])
            assert (expired.status_code, expired.json()["error"]) == (400, "invalid_token")


async def test_verify_flow_for_a_signed_in_user_CHK_PW_08(
    mail_client: tuple[FastAPI, httpx.AsyncClient], smtp_mailbox: Mailbox
):
    app, client = mail_client
    email, _password, token = await signed_up_user(client, smtp_mailbox)
    client.cookies.clear()
    me = await client.get("/api/auth/session", headers=bearer(token))
    assert me.json()["user"]["email_verified"] is False

    assert (await request_verification(client, headers=bearer(token))).status_code == 202
    [mail] = smtp_mailbox.to(email)
    assert mail.message["Subject"] == "Confirm your email address for authkeep"
    assert mail.link()["path"] == "/verify-email"
    verified = await confirm(client, mail.token())
    assert (verified.status_code, verified.json()) == (200, {"status": "verified"})

    me = await client.get("/api/auth/session", headers=bearer(token))
    assert me.json()["user"]["email_verified"] is True
    again = await request_verification(client, headers=bearer(token))
    assert (again.status_code, again.json()["error"]) == (409, "email_already_verified")
    assert len(smtp_mailbox.messages) == 1
    # One from sign-up (taken out by `signed_up_user`), one from the request above.
    assert [e.outcome for e in await audit_rows(app, "auth.verify_email.request")] == [
        "sent",
        "sent",
    ]
    assert [e.outcome for e in await audit_rows(app, "auth.verify_email.confirm")] == ["success"]


async def test_signed_in_verification_request_refuses_another_address(
    mail_client: tuple[FastAPI, httpx.AsyncClient], smtp_mailbox: Mailbox
):
    _app, client = mail_client
    _email, _password, token = await signed_up_user(client, smtp_mailbox)
    client.cookies.clear()
    other = await request_verification(client, email=new_email(), headers=bearer(token))
    assert (other.status_code, other.json()["error"]) == (422, "validation_error")
    assert smtp_mailbox.messages == []


async def test_required_verification_end_to_end(
    migrated_url: str, make_settings, smtp_mailbox: Mailbox
):
    """`require_verified_email`: sign-in before verification → 403 email_not_verified; the
    signed-out user asks for a link by address, follows it, and the next sign-in works."""
    async with (
        mail_app(make_settings, migrated_url, smtp_mailbox, require_verified_email=True) as app,
        client_for(app) as client,
    ):
        email, password = new_email(), strong_password()
        assert (await sign_up(client, email, password)).status_code == 202
        refused = await sign_in(client, email, password)
        assert (refused.status_code, refused.json()["error"]) == (403, "email_not_verified")

        # Sign-up mailed the link already; a signed-out user can also ask for another one.
        [welcome] = smtp_mailbox.to(email)
        assert (await request_verification(client, email=email)).status_code == 202
        assert (await confirm(client, welcome.token())).status_code == 200
        assert (await sign_in(client, email, password)).status_code == 200


async def test_unknown_and_verified_addresses_get_no_mail_but_the_same_answer(
    mail_client: tuple[FastAPI, httpx.AsyncClient], smtp_mailbox: Mailbox
):
    app, client = mail_client
    [known] = await make_accounts(app, 1)
    verified, _password, _token = await signed_up_user(client, smtp_mailbox)
    client.cookies.clear()
    await request_verification(client, email=verified)  # unverified yet: gets a link
    await confirm(client, smtp_mailbox.last_token(verified))
    nobody = new_email("nobody")
    answers = [
        await request_verification(client, email=known),
        await request_verification(client, email=verified),
        await request_verification(client, email=nobody),
    ]
    assert {(a.status_code, a.content) for a in answers} == {(202, answers[0].content)}
    assert (await forgot(client, nobody)).status_code == 202
    assert [m.recipients for m in smtp_mailbox.messages] == [[verified], [known]]
    outcomes = [e.outcome for e in await audit_rows(app, "auth.verify_email.request")]
    # The first "sent" is the mail sign-up itself sends.
    assert outcomes == ["sent", "sent", "sent", "already_verified", "unknown_email"]
    assert [e.outcome for e in await audit_rows(app, "auth.password.forgot")] == ["unknown_email"]


async def test_reset_unlocks_an_account_locked_by_guessing_CHK_BF_03(
    migrated_url: str, make_settings, smtp_mailbox: Mailbox
):
    """An attacker drives the account past the failure ceiling; the owner resets the password
    and signs in on the first attempt. Test-only cheap argon2 parameters (1 MiB, t=1) keep the
    101 guesses fast."""
    async with (
        mail_app(
            make_settings,
            migrated_url,
            smtp_mailbox,
            cheap=True,
            login_ip_failures_per_minute=10_000,
        ) as app,
        client_for(app) as client,
    ):
        email, password, _token = await signed_up_user(client, smtp_mailbox)
        client.cookies.clear()
        ceiling = app.state.settings.login_max_failures
        for _ in range(ceiling + 1):
            assert (await sign_in(client, email, strong_password("guess-"))).status_code == 401
        locked = await sign_in(client, email, password)
        assert (locked.status_code, locked.json()["error"]) == (401, "invalid_credentials")

        await forgot(client, email)
        new_password = strong_password("copper-meadow-")
        assert (
            await reset(client, smtp_mailbox.last_token(email), new_password)
        ).status_code == 200
        assert (await user_row(app, email)).failed_login_count == 0
        assert (await sign_in(client, email, new_password)).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Forwarded-Host": "evil.example"},
        {"Host": "evil.example"},
        {"Host": "evil.example", "X-Forwarded-Host": "evil.example", "Forwarded": "host=evil"},
    ],
)
async def test_reset_link_host_cannot_be_steered_when_public_url_is_set_BI_05(
    migrated_url: str, make_settings, smtp_mailbox: Mailbox, headers: dict[str, str]
):
    public = "https://auth.example.com"
    async with (
        mail_app(make_settings, migrated_url, smtp_mailbox, public_url=public) as app,
        client_for(app) as client,
    ):
        [email] = await make_accounts(app, 1)
        assert (await forgot(client, email, headers=headers)).status_code == 202
        [mail] = smtp_mailbox.to(email)
        mail.token()
        assert mail.link()["base"] == public
        assert "evil" not in mail.body


async def test_without_public_url_links_use_host_never_x_forwarded_host_BI_05(
    mail_client: tuple[FastAPI, httpx.AsyncClient], smtp_mailbox: Mailbox
):
    app, client = mail_client
    [email] = await make_accounts(app, 1)
    await forgot(client, email, headers={"X-Forwarded-Host": "evil.example"})
    [mail] = smtp_mailbox.to(email)
    mail.token()
    assert mail.link()["base"] == "http://testserver"
    # A Host that could smuggle a path or credentials into the link is refused.
    for host in ("evil.example/x", "user@evil.example", "evil.example\\x"):
        bad = await forgot(client, email, headers={"Host": host})
        assert (bad.status_code, bad.json()["error"]) == (422, "validation_error"), host
    assert len(smtp_mailbox.messages) == 1


async def test_cross_site_forms_are_refused_and_unknown_fields_are_422(
    mail_client: tuple[FastAPI, httpx.AsyncClient], smtp_mailbox: Mailbox
):
    app, client = mail_client
    [email] = await make_accounts(app, 1)
    cross = await forgot(client, email, headers={"Sec-Fetch-Site": "cross-site"})
    assert (cross.status_code, cross.json()["error"]) == (403, "csrf_rejected")
    same = await forgot(client, email, headers=SAME_ORIGIN)
    assert same.status_code == 202
    extra = await client.post("/api/auth/password/forgot", json={"email": email, "role": "admin"})
    assert (extra.status_code, extra.json()["error"]) == (422, "validation_error")
    assert extra.headers["cache-control"] == "no-store"
    assert len(smtp_mailbox.messages) == 1


@pytest.mark.parametrize(
    ("path", "api"),
    [
        ("/reset-password", "api/auth/password/reset"),
        ("/verify-email", "api/auth/verify-email/confirm"),
    ],
)
async def test_link_pages_are_self_contained_with_a_strict_csp(
    mail_client: tuple[FastAPI, httpx.AsyncClient], path: str, api: str
):
    """The pages read the fragment and POST it; a nonce is the only way anything runs, and
    nothing is loaded from anywhere."""
    _app, client = mail_client
    first, second = await client.get(path), await client.get(path)
    assert first.status_code == 200
    assert first.headers["content-type"].startswith("text/html")
    csp = first.headers["content-security-policy"]
    nonce = csp.split("'nonce-", 1)[1].split("'", 1)[0]
    assert nonce != second.headers["content-security-policy"].split("'nonce-", 1)[1][: len(nonce)]
    for directive in (
        "default-src 'none'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'none'",
    ):
        assert directive in csp
    assert "unsafe-inline" not in csp
    html = first.text
    assert html.count("<script") == html.count(f'<script nonce="{nonce}">') == 1
    assert html.count("<style") == html.count(f'<style nonce="{nonce}">') == 1
    assert "location.hash" in html
    assert "history.replaceState" in html
    assert f'"{api}"' in html
    assert "://" not in html
    assert " src=" not in html
    assert first.headers["referrer-policy"] == "no-referrer"
    assert first.headers["cache-control"] == "no-store"
    assert first.headers["x-frame-options"] == "DENY"
