"""`authkeep users …`: create or update an admin, list, disable and enable users.

Thin wrappers over `authkeep.users.admin`. They use the server's own DSN chain (the app role
can change accounts; no admin DSN needed) and refuse to run against a schema that is not at
head. Passwords never come from the command line, where `ps` and shell history would show
them: only from a hidden prompt, `--password-stdin`, or `AUTHKEEP_ADMIN_PASSWORD`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.markup import escape
from rich.table import Table

from authkeep.cli.output import EXIT_USAGE, JsonOption, Output, load_settings_or_fail, run, stdout
from authkeep.config import Settings
from authkeep.core import migrate
from authkeep.core.bootstrap import select_database
from authkeep.core.db import Database
from authkeep.core.security import PasswordHashing
from authkeep.errors import DatabaseBootstrapError
from authkeep.users import admin, delays
from authkeep.users.admin_routes import AdminUserRead
from authkeep.users.service import InvalidEmail, canonical_email

PASSWORD_ENV = "AUTHKEEP_ADMIN_PASSWORD"  # noqa: S105 (a variable name)
T = TypeVar("T")

app = typer.Typer(help="Create admins; list, disable and enable users.", no_args_is_help=True)


class UsageProblem(Exception):
    """Bad input found only once the database answered (exit 2, not 1)."""


async def with_app_database(settings: Settings, work: Callable[[Database], Awaitable[T]]) -> T:
    """Open the server's database (same DSN chain), check the schema is at head, run `work`."""
    selection = await select_database(settings)
    if not selection.reachable:
        raise DatabaseBootstrapError(
            f"No database answered: {selection.reason}. "
            + " ".join(p.fix for p in selection.probes)
        )
    database = Database.open(selection.candidate, settings)
    try:
        await migrate.require_head(database.engine)
        return await work(database)
    finally:
        await database.dispose()


def _start(json_output: bool) -> tuple[Output, Settings]:
    out = Output(json_output)
    settings = load_settings_or_fail(out)
    return out, settings


def _canonical(out: Output, email: str) -> str:
    try:
        return canonical_email(email)
    except InvalidEmail as exc:
        out.fail(str(exc), code="invalid_email", exit_code=EXIT_USAGE)


def _read_password(out: Output, *, from_stdin: bool, keep: bool) -> str | None:
    """The password from exactly one source, or None with `--keep-password`."""
    from_env = os.environ.get(PASSWORD_ENV) or None
    if sum([from_stdin, from_env is not None, keep]) > 1:
        out.fail(
            f"Give the password one way: --password-stdin, {PASSWORD_ENV}, or --keep-password.",
            code="usage",
            exit_code=EXIT_USAGE,
        )
    if keep:
        return None
    if from_env is not None:
        return from_env
    if from_stdin:
        text = sys.stdin.read()
        # One trailing newline is the line's end, not part of the password (`echo … |`).
        password = text.removesuffix("\n").removesuffix("\r")
        if not password:
            out.fail("No password on stdin.", code="usage", exit_code=EXIT_USAGE)
        return password
    password = typer.prompt(
        "Password for the admin", hide_input=True, confirmation_prompt=True, err=True
    )
    return str(password)


def _describe(outcome: admin.Outcome, email: str, *, password_given: bool) -> str:
    shown = escape(email)
    if outcome.created:
        return f"[green]Created[/] admin {shown} (email verified)."
    if not outcome.changed:
        same = " with this password" if password_given else ""
        return f"Nothing to do: {shown} is already an admin{same}."
    names = {"role": "role → admin", "email_verified": "email verified", "password": "password set"}
    changes = ", ".join(names[c] for c in outcome.changes)
    ended = f" ({outcome.sessions_ended} sessions ended)" if "password" in outcome.changes else ""
    return f"[green]Updated[/] {shown}: {changes}{ended}."


@app.command("create-admin")
def create_admin(
    email: Annotated[str, typer.Option("--email", help="The admin's email address.")],
    password_stdin: Annotated[
        bool,
        typer.Option("--password-stdin", help="Read the password from stdin (one line)."),
    ] = False,
    keep_password: Annotated[
        bool,
        typer.Option("--keep-password", help="Existing user: make admin, leave the password."),
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """Create an admin, or make an existing user one: role admin, email verified.

    The password comes from a hidden prompt (asked twice), from stdin with `--password-stdin`,
    or from AUTHKEEP_ADMIN_PASSWORD, never from an option. It must pass the password policy.
    For an existing user it is set only when it differs from the current one (which ends their
    sessions). Running the same command again changes nothing and says so.

    Example: `authkeep users create-admin --email ops@example.com --password-stdin < pass.txt`
    """
    out, settings = _start(json_output)
    canonical = _canonical(out, email)
    password = _read_password(out, from_stdin=password_stdin, keep=keep_password)

    async def work(database: Database) -> admin.Outcome:
        hashing = PasswordHashing(workers=1, queue_limit=4)
        try:
            outcome = await admin.ensure_admin(database, hashing, settings, canonical, password)
        except admin.PasswordNeeded as exc:
            raise UsageProblem(
                f"{canonical} has no account yet, so it needs a password: leave out "
                "--keep-password and use the prompt, --password-stdin or "
                f"{PASSWORD_ENV}."
            ) from exc
        finally:
            hashing.close()
        if "password" in outcome.changes:
            # Like a reset: the address's sign-in delay ends too (only reachable in Redis).
            await delays.end_shared_delay(settings, canonical)
        return outcome

    try:
        outcome = run(out, lambda: with_app_database(settings, work))
    except UsageProblem as exc:
        out.fail(str(exc), code="password_needed", exit_code=EXIT_USAGE)
    _report_admin(out, outcome, password_given=password is not None)


def _report_admin(out: Output, outcome: admin.Outcome, *, password_given: bool) -> None:
    user = outcome.user
    out.result(
        {
            "ok": True,
            "id": str(user.id),
            "email": user.email,
            "created": outcome.created,
            "changed": outcome.changed,
            "changes": outcome.changes,
            "sessions_ended": outcome.sessions_ended,
            "disabled": user.disabled_at is not None,
        },
        _describe(outcome, user.email, password_given=password_given),
    )
    if user.disabled_at is not None:
        out.info(
            f"Note: this account is disabled: run `authkeep users enable {escape(user.email)}`."
        )


@app.command("list")
def list_users(
    role: Annotated[
        str | None, typer.Option("--role", help="Only this role: user or admin.")
    ] = None,
    email_prefix: Annotated[
        str | None, typer.Option("--email-prefix", help="Only emails starting with this.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=10_000)] = 1000,
    json_output: JsonOption = False,
) -> None:
    """List users by email (deleted accounts are left out).

    Example: `authkeep users list --role admin --json`
    """
    out, settings = _start(json_output)
    if role is not None and role not in admin.ROLES:
        out.fail(f"--role must be one of: {', '.join(admin.ROLES)}.", exit_code=EXIT_USAGE)

    async def work(database: Database) -> list[AdminUserRead]:
        async with database.session_scope() as db:
            found = await admin.list_users(db, email_prefix=email_prefix, role=role, limit=limit)
            return [AdminUserRead.of(user) for user in found]

    found = run(out, lambda: with_app_database(settings, work))
    out.result({"ok": True, "users": [user.model_dump(mode="json") for user in found]})
    if not json_output:
        _print_users(found)


def _print_users(found: list[AdminUserRead]) -> None:
    table = Table("email", "role", "verified", "status", "created")
    for user in found:
        status = "disabled" if user.disabled else "active"
        if user.password_reset_required:
            status += ", reset required"
        table.add_row(
            escape(user.email),
            user.role,
            "yes" if user.email_verified else "no",
            status,
            user.created_at.strftime("%Y-%m-%d %H:%M UTC"),
        )
    stdout.print(table)
    stdout.print(f"{len(found)} users")


def _set_disabled(email: str, json_output: bool, *, disabled: bool) -> None:
    out, settings = _start(json_output)
    canonical = _canonical(out, email)

    async def work(database: Database) -> admin.Outcome:
        async with database.session_scope() as db:
            user = await admin.find(db, email=canonical)
            return await admin.set_disabled(db, user, disabled=disabled, actor=admin.CLI)

    outcome = run(out, lambda: with_app_database(settings, work))
    state = "disabled" if disabled else "enabled"
    shown = escape(outcome.user.email)
    text = f"{shown} was already {state}; nothing changed."
    if outcome.changed:
        ended = f"; {outcome.sessions_ended} sessions ended" if disabled else ""
        text = f"[green]{state.capitalize()}[/] {shown}{ended}."
    data: dict[str, Any] = {
        "ok": True,
        "id": str(outcome.user.id),
        "email": outcome.user.email,
        "disabled": disabled,
        "changed": outcome.changed,
        "sessions_ended": outcome.sessions_ended,
    }
    out.result(data, text)


@app.command("disable")
def disable(
    email: Annotated[str, typer.Argument(help="The user's email address.")],
    json_output: JsonOption = False,
) -> None:
    """Disable a user: sign-in is refused and every session ends at once.

    Exit 1 when no user has this email.

    Example: `authkeep users disable mallory@example.com --json`
    """
    _set_disabled(email, json_output, disabled=True)


@app.command("enable")
def enable(
    email: Annotated[str, typer.Argument(help="The user's email address.")],
    json_output: JsonOption = False,
) -> None:
    """Let a disabled user sign in again. Exit 1 when no user has this email.

    Example: `authkeep users enable alice@example.com`
    """
    _set_disabled(email, json_output, disabled=False)


@app.command("reset-mfa")
def reset_mfa(
    email: Annotated[str, typer.Argument(help="The user's email address.")],
    json_output: JsonOption = False,
) -> None:
    """Take away a user's second factor: the TOTP factor, the recovery codes and open MFA
    challenges are deleted and every session ends. The user then signs in with the password
    alone and can turn MFA on again. For a user who lost both the authenticator and the
    recovery codes, and for everyone with MFA after AUTHKEEP_SECRET_KEY changed (their seeds
    and codes no longer verify). Exit 1 when no user has this email.

    Example: `authkeep users reset-mfa alice@example.com`
    """
    out, settings = _start(json_output)
    canonical = _canonical(out, email)

    async def work(database: Database) -> admin.Outcome:
        async with database.session_scope() as db:
            user = await admin.find(db, email=canonical)
            return await admin.reset_mfa(db, user, actor=admin.CLI)

    outcome = run(out, lambda: with_app_database(settings, work))
    shown = escape(outcome.user.email)
    text = (
        f"[green]MFA reset[/] for {shown}; {outcome.sessions_ended} sessions ended."
        if outcome.changed
        else f"{shown} had no second factor; {outcome.sessions_ended} sessions ended."
    )
    data = {
        "ok": True,
        "id": str(outcome.user.id),
        "email": outcome.user.email,
        "changed": outcome.changed,
        "sessions_ended": outcome.sessions_ended,
    }
    out.result(data, text)
