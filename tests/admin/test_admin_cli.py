"""`authkeep users …` run as an operator runs it (synchronous tests: the CLI runs its own event
loop). Passwords only from a hidden prompt, stdin or AUTHKEEP_ADMIN_PASSWORD, never argv;
create-admin is idempotent; disable ends sessions at once (CHK-SE-05); every command's exit
codes are 0/1/2."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import typer
from admin_helpers import (
    bearer,
    invoke,
    json_out,
    new_email,
    new_user,
    on_app,
    sign_in,
    strong_password,
)
from fastapi import FastAPI
from sqlalchemy import select

from authkeep.audit.models import AuditEvent
from authkeep.cli import app as cli_app
from authkeep.config import load_settings
from authkeep.core.db import Database
from authkeep.core.dsn import candidates
from authkeep.users.models import User


def env_for(url: str, **extra: str) -> dict[str, str]:
    return {"DATABASE_URL": url, **extra}


def read(url: str, query: Any) -> list[Any]:
    """Rows straight from the database, outside any app."""

    async def go() -> list[Any]:
        settings = load_settings(database_url=url)
        db_handle = Database.open(candidates(settings)[0], settings)
        try:
            async with db_handle.session_scope() as db:
                return list((await db.scalars(query)).all())
        finally:
            await db_handle.dispose()

    return asyncio.run(go())


def user(url: str, email: str) -> User:
    (row,) = read(url, select(User).where(User.email == email))
    return row


def can_sign_in(make_settings, url: str, email: str, password: str) -> int:
    async def work(_app: FastAPI, client: httpx.AsyncClient) -> int:
        return (await sign_in(client, email, password)).status_code

    return on_app(make_settings, url, work)


def test_no_option_takes_a_password_on_the_command_line():
    group: Any = typer.main.get_command(cli_app)
    create = group.commands["users"].commands["create-admin"]
    options = [p for p in create.params if p.param_type_name == "option"]
    assert [p.name for p in options if not p.is_flag] == ["email"], "only --email takes a value"
    assert [p.name for p in options if "password" in p.name] == ["password_stdin", "keep_password"]
    help_text = invoke("users", "create-admin", "--help").output
    assert "--password-stdin" in help_text
    assert "--password " not in help_text
    refused = invoke("users", "create-admin", "--email", "a@example.com", "--password", "x" * 20)
    assert refused.exit_code == 2
    assert "No such option" in refused.output


def test_create_admin_from_env_is_idempotent(migrated_url: str, make_settings):
    email = new_email("ops")
    password = strong_password()
    env = env_for(migrated_url, AUTHKEEP_ADMIN_PASSWORD=password)
    first = invoke("users", "create-admin", "--email", email, "--json", env=env)
    assert first.exit_code == 0, first.output
    body = json_out(first)
    assert (body["created"], body["changed"], body["email"]) == (True, True, email)
    row = user(migrated_url, email)
    assert (row.role, row.email_verified_at is not None) == ("admin", True)

    again = invoke("users", "create-admin", "--email", email.upper(), env=env)
    assert again.exit_code == 0, again.output
    assert "Nothing to do" in again.output
    second = invoke("users", "create-admin", "--email", email, "--json", env=env)
    assert (json_out(second)["changed"], json_out(second)["changes"]) == (False, [])
    unchanged = user(migrated_url, email)
    assert (unchanged.password_hash, unchanged.updated_at) == (row.password_hash, row.updated_at)
    assert password not in first.output + again.output + second.output
    assert can_sign_in(make_settings, migrated_url, email, password) == 200


def test_create_admin_prompts_twice_without_echo(migrated_url: str):
    email = new_email("ops")
    password = strong_password()
    result = invoke(
        "users",
        "create-admin",
        "--email",
        email,
        env=env_for(migrated_url),
        input=f"{password}\n{password}\n",
    )
    assert result.exit_code == 0, result.output
    assert "Created" in result.output
    assert "Repeat for confirmation" in result.output
    assert password not in result.output
    assert user(migrated_url, email).role == "admin"


def test_prompt_mismatch_creates_nothing(migrated_url: str):
    email = new_email("ops")
    typed = f"{strong_password()}\n{strong_password()}\n"
    result = invoke(
        "users", "create-admin", "--email", email, env=env_for(migrated_url), input=typed
    )
    assert result.exit_code == 1
    assert "do not match" in result.output
    assert read(migrated_url, select(User).where(User.email == email)) == []


def test_password_from_stdin(migrated_url: str, make_settings):
    email = new_email("ops")
    password = strong_password("with spaces inside ")
    result = invoke(
        "users",
        "create-admin",
        "--email",
        email,
        "--password-stdin",
        "--json",
        env=env_for(migrated_url),
        input=password + "\n",
    )
    assert result.exit_code == 0, result.output
    assert json_out(result)["created"] is True
    assert can_sign_in(make_settings, migrated_url, email, password) == 200


def test_usage_errors_exit_2(migrated_url: str):
    env = env_for(migrated_url)
    email = new_email("ops")
    empty = invoke("users", "create-admin", "--email", email, "--password-stdin", env=env, input="")
    assert empty.exit_code == 2
    assert "No password on stdin" in empty.output
    both = invoke(
        "users",
        "create-admin",
        "--email",
        email,
        "--password-stdin",
        env={**env, "AUTHKEEP_ADMIN_PASSWORD": strong_password()},
        input=strong_password(),
    )
    assert both.exit_code == 2
    assert "one way" in both.output
    keep = invoke("users", "create-admin", "--email", email, "--keep-password", "--json", env=env)
    assert keep.exit_code == 2
    assert json_out(keep)["error"] == "password_needed"
    bad = invoke("users", "disable", "not an email", "--json", env=env)
    assert (bad.exit_code, json_out(bad)["error"]) == (2, "invalid_email")
    role = invoke("users", "list", "--role", "root", env=env)
    assert role.exit_code == 2
    assert read(migrated_url, select(User)) == []


def test_weak_password_is_refused_by_the_policy(migrated_url: str):
    email = new_email("ops")
    for weak, reason in [
        ("short-Pw1", "password_too_short"),
        ("Password1234567!", "password_common"),
    ]:
        result = invoke(
            "users",
            "create-admin",
            "--email",
            email,
            "--json",
            env=env_for(migrated_url, AUTHKEEP_ADMIN_PASSWORD=weak),
        )
        assert (result.exit_code, json_out(result)["error"]) == (1, reason)
    assert read(migrated_url, select(User)) == []


def test_existing_user_becomes_admin_and_password_changes_only_when_given(
    migrated_url: str, make_settings
):
    async def sign_up_user(_app: FastAPI, client: httpx.AsyncClient) -> tuple[str, str, str]:
        return await new_user(client)

    email, password, token = on_app(make_settings, migrated_url, sign_up_user)
    env = env_for(migrated_url)
    kept = invoke("users", "create-admin", "--email", email, "--keep-password", "--json", env=env)
    assert kept.exit_code == 0, kept.output
    assert json_out(kept)["changes"] == ["role", "email_verified"]
    kept_again = invoke("users", "create-admin", "--email", email, "--keep-password", env=env)
    assert f"Nothing to do: {email} is already an admin." in kept_again.output
    assert user(migrated_url, email).role == "admin"

    async def session_status(_app: FastAPI, client: httpx.AsyncClient) -> int:
        return (await client.get("/api/auth/session", headers=bearer(token))).status_code

    assert on_app(make_settings, migrated_url, session_status) == 200, "password kept: no logout"
    new_password = strong_password()
    changed = invoke(
        "users",
        "create-admin",
        "--email",
        email,
        env={**env, "AUTHKEEP_ADMIN_PASSWORD": new_password},
    )
    assert changed.exit_code == 0, changed.output
    assert "password set (1 sessions ended)" in changed.output
    assert on_app(make_settings, migrated_url, session_status) == 401
    assert can_sign_in(make_settings, migrated_url, email, password) == 401
    assert can_sign_in(make_settings, migrated_url, email, new_password) == 200


def test_disable_ends_sessions_at_once_and_enable_restores_sign_in_CHK_SE_05(
    migrated_url: str, make_settings
):
    async def sign_up_user(_app: FastAPI, client: httpx.AsyncClient) -> tuple[str, str, str]:
        return await new_user(client)

    email, password, token = on_app(make_settings, migrated_url, sign_up_user)
    env = env_for(migrated_url)
    result = invoke("users", "disable", email, "--json", env=env)
    assert result.exit_code == 0, result.output
    assert json_out(result) | {"id": None} == {
        "ok": True,
        "id": None,
        "email": email,
        "disabled": True,
        "changed": True,
        "sessions_ended": 1,
    }

    async def after_disable(_app: FastAPI, client: httpx.AsyncClient) -> tuple[int, int]:
        session = await client.get("/api/auth/session", headers=bearer(token))
        return session.status_code, (await sign_in(client, email, password)).status_code

    assert on_app(make_settings, migrated_url, after_disable) == (401, 401)
    again = invoke("users", "disable", email, env=env)
    assert (again.exit_code, "already disabled" in again.output) == (0, True)
    events = read(migrated_url, select(AuditEvent).where(AuditEvent.action.like("admin.user.%")))
    assert [(e.action, e.actor, e.target) for e in events] == [
        ("admin.user.disable", "cli", str(user(migrated_url, email).id))
    ] * 2
    assert [e.detail["changed"] for e in events] == [True, False]

    enabled = invoke("users", "enable", email, env=env)
    assert (enabled.exit_code, "Enabled" in enabled.output) == (0, True)
    assert user(migrated_url, email).disabled_at is None
    assert can_sign_in(make_settings, migrated_url, email, password) == 200


def test_unknown_email_exits_1_with_a_clear_message(migrated_url: str):
    env = env_for(migrated_url)
    for command in ("disable", "enable"):
        result = invoke("users", command, "nobody@example.com", env=env)
        assert result.exit_code == 1
        assert "No user with the email nobody@example.com" in result.output
    as_json = invoke("users", "disable", "nobody@example.com", "--json", env=env)
    assert json_out(as_json)["error"] == "unknown_user"


def test_list_shows_users_as_json_and_text(migrated_url: str, make_settings):
    async def two_users(_app: FastAPI, client: httpx.AsyncClient) -> list[str]:
        return [(await new_user(client))[0] for _ in range(2)]

    emails = on_app(make_settings, migrated_url, two_users)
    env = env_for(migrated_url)
    admin_email = new_email("boss")
    made = invoke(
        "users",
        "create-admin",
        "--email",
        admin_email,
        env={**env, "AUTHKEEP_ADMIN_PASSWORD": strong_password()},
    )
    assert made.exit_code == 0
    listed = invoke("users", "list", "--json", env=env)
    assert listed.exit_code == 0, listed.output
    users = json_out(listed)["users"]
    assert sorted(u["email"] for u in users) == sorted([*emails, admin_email])
    assert all("password_hash" not in u for u in users)
    admins = json_out(invoke("users", "list", "--json", "--role", "admin", env=env))["users"]
    assert [(u["email"], u["role"], u["email_verified"]) for u in admins] == [
        (admin_email, "admin", True)
    ]
    text = invoke("users", "list", env=env).output
    assert all(e in text for e in emails)
    assert "3 users" in text


def test_refuses_a_schema_that_is_not_at_head(sqlite_url: str):
    result = invoke("users", "list", "--json", env=env_for(sqlite_url))
    assert result.exit_code == 1
    body = json_out(result)
    assert body["error"] == "schema_behind"
    assert "authkeep db migrate" in body["detail"]
