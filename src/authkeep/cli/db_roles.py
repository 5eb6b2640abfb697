"""`authkeep db roles` and `authkeep db truncate`: thin wrappers over `authkeep.ops.roles`,
`authkeep.ops.roles_verify` and `authkeep.ops.truncate`.

Exit codes: 0 done (or every check as expected), 1 failed or a check did not match, 2 refused
or bad usage (no password, SQLite, a reserved role name, truncate without `--yes`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, TypeVar

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from authkeep.cli.output import (
    EXIT_USAGE,
    JsonOption,
    Output,
    ProgressCallback,
    load_settings_or_fail,
    progress_bar,
    run,
    stderr,
    stdout,
)
from authkeep.config import Settings
from authkeep.core.bootstrap import select_admin_database
from authkeep.core.db import Database
from authkeep.core.dsn import Candidate
from authkeep.ops import role_inputs, roles_verify
from authkeep.ops import roles as ops_roles
from authkeep.ops import truncate as ops_truncate

T = TypeVar("T")

RoleOption = Annotated[
    str | None,
    typer.Option(
        "--role", help="The app role's name (default: AUTHKEEP_DB_APP_ROLE, else authkeep_app)."
    ),
]
VerifyOption = Annotated[
    bool,
    typer.Option(
        "--verify",
        help="Connect AS the app role and check what it can and cannot do; changes nothing.",
    ),
]


SQLITE_ROLES = "SQLite has no database roles: nothing to do."
SQLITE_TRUNCATE = "For a SQLite development database, stop the server and delete the file."


async def _admin_candidate(settings: Settings, sqlite_hint: str) -> Candidate:
    """DATABASE_URL_ADMIN, else the server's DSN chain; PostgreSQL only."""
    selection = await select_admin_database(settings)
    if selection.candidate.is_sqlite:
        raise role_inputs.RoleUsageError(
            "This command needs PostgreSQL; the selected database is SQLite "
            f"({selection.candidate.display}). {sqlite_hint}"
        )
    return selection.candidate


@asynccontextmanager
async def _admin_database(
    settings: Settings, sqlite_hint: str
) -> AsyncIterator[tuple[Database, Candidate]]:
    """The admin database, without the server's statement timeout (schema work can be long)."""
    candidate = await _admin_candidate(settings, sqlite_hint)
    unlimited = settings.model_copy(update={"db_statement_timeout_ms": 0})
    database = Database.open(candidate, unlimited)
    try:
        yield database, candidate
    finally:
        await database.dispose()


def _run(out: Output, work: Callable[[], Awaitable[T]]) -> T:
    """`run`, with this group's refusals exiting 2."""
    return run(out, work, refusals=(role_inputs.RoleUsageError,))


def _app_password(out: Output, *, confirm: bool) -> str:
    """From AUTHKEEP_DB_APP_PASSWORD or a hidden prompt; never from argv (it would show in ps)."""
    value = os.environ.get(role_inputs.PASSWORD_ENV, "")
    if value:
        return value
    if not sys.stdin.isatty():
        out.fail(
            f"No app role password: set {role_inputs.PASSWORD_ENV} or run in a terminal to be "
            "prompted. It is never read from the command line.",
            code="password_required",
            exit_code=EXIT_USAGE,
        )
    prompt: str = typer.prompt(
        "App role password", hide_input=True, confirmation_prompt=confirm, err=True
    )
    return prompt


def roles(
    role: RoleOption = None, verify: VerifyOption = False, json_output: JsonOption = False
) -> None:
    """Create or update the limited app role the server connects as (seed 002's two roles).

    Connects with DATABASE_URL_ADMIN (else the server's DSN chain). The app role gets CONNECT,
    USAGE on schema public, SELECT/INSERT/UPDATE/DELETE on every table (SELECT only on
    alembic_version), USAGE/SELECT on sequences, and default privileges so tables that later
    migrations create are reachable; `db migrate` re-applies them. It owns nothing, is not
    superuser and cannot change the schema. The password comes from AUTHKEEP_DB_APP_PASSWORD or
    a hidden prompt, never from the command line. A second run changes nothing; a run with
    another password rotates it.

    With --verify: connect AS the app role and, on every table, try SELECT/INSERT/UPDATE/DELETE
    (allowed) and ALTER/DROP/TRUNCATE/GRANT, plus CREATE TABLE/SCHEMA/EXTENSION (refused with
    SQLSTATE 42501), all rolled back. Exit 0 only when every check is as expected.

    Example: `DATABASE_URL_ADMIN=postgresql://admin:…@db:5432/app authkeep db roles --verify`
    """
    out = Output(json_output)
    settings = load_settings_or_fail(out)
    name = role or settings.db_app_role
    try:
        role_inputs.validate_role_name(name)
    except role_inputs.RoleUsageError as exc:
        out.fail_with(exc, exit_code=EXIT_USAGE)
    password = _app_password(out, confirm=not verify)
    if verify:
        _verify(out, settings, name, password)
    else:
        _ensure(out, settings, name, password)


def _ensure(out: Output, settings: Settings, name: str, password: str) -> None:
    async def work() -> tuple[ops_roles.RoleReport, str]:
        async with _admin_database(settings, SQLITE_ROLES) as (database, candidate):
            report = await ops_roles.ensure_app_role(database.engine, name, password)
            return report, role_inputs.database_url_hint(candidate.url, name)

    report, hint = _run(out, work)
    out.result({**report.as_dict(), "database_url": hint}, _ensure_text(report, hint))
    if report.problems:
        if not out.json:
            for problem in report.problems:
                stderr.print(f"[red]✗[/] {escape(problem)}")
        raise typer.Exit(1)


def _ensure_text(report: ops_roles.RoleReport, hint: str) -> str:
    state = "created" if report.created else ("updated" if report.changes else "unchanged")
    lines = [f"[bold]App role {escape(report.role)!r}[/]: {state} ({report.changes} change(s))"]
    if report.created:
        lines.append("  password: set")
    elif report.password_changed:
        compared = "" if report.password_compared else " (could not compare: admin not superuser)"
        lines.append(f"  password: set{compared}")
    else:
        lines.append("  password: unchanged")
    if report.attributes_changed:
        lines.append(f"  attributes fixed: {' '.join(report.attributes_changed)}")
    grants = report.grants
    for line in grants.granted if grants else []:
        lines.append(f"  [green]+[/] {escape(line)}")
    for line in grants.revoked if grants else []:
        lines.append(f"  [yellow]-[/] {escape(line)}")
    lines.append(
        f"Next: set DATABASE_URL={escape(hint)} for the server, and run "
        "`authkeep db roles --verify`."
    )
    return "\n".join(lines)


def _verify(out: Output, settings: Settings, name: str, password: str) -> None:
    async def work(progress: ProgressCallback) -> roles_verify.VerifyReport:
        candidate = await _admin_candidate(settings, SQLITE_ROLES)
        url = role_inputs.app_role_url(candidate.url, name, password)
        return await roles_verify.verify_app_role(url, progress)

    with progress_bar(out) as progress:
        report = _run(out, lambda: work(progress))
    out.result(report.as_dict())
    if not out.json:
        _print_verify(report)
    if not report.ok:
        raise typer.Exit(1)


_MARK = {"allowed": "yes", "refused": "no", "error": "error", "skipped": "skip"}
LEGEND = (
    "yes = allowed, no = refused with SQLSTATE 42501, no* = PostgreSQL's warning 01007 "
    "'no privileges were granted', red = not as expected"
)


def _cell(attempt: roles_verify.Attempt) -> str:
    word = _MARK[attempt.outcome]
    if attempt.sqlstate == "01007":
        word += "*"
    elif attempt.sqlstate and attempt.sqlstate != "42501":
        word += f" {attempt.sqlstate}"
    if attempt.ok:
        return f"[green]{word}[/]"
    return f"[bold red]{word}![/]"


def _print_verify(report: roles_verify.VerifyReport) -> None:
    actions = ["SELECT", "INSERT", "UPDATE", "DELETE", "ALTER", "DROP", "TRUNCATE", "GRANT"]
    table = Table(
        "table",
        *actions,
        title=f"What {escape(repr(report.role))} can do, table by table",
        caption=LEGEND,
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    for name in report.tables:
        by_action = {a.action: a for a in report.attempts if a.target == name}
        table.add_row(escape(name), *(_cell(by_action[action]) for action in actions))
    stdout.print(table)
    others = Table(
        "on", "attempt", "outcome", title="Schema, database and role", box=box.SIMPLE_HEAD
    )
    for attempt in report.attempts:
        if attempt.target not in report.tables:
            others.add_row(escape(attempt.target), attempt.action, _cell(attempt))
    for fact in report.facts:
        value = (
            f"{fact.value}" if fact.ok else f"[bold red]{fact.value}[/] (must be {fact.expected})"
        )
        others.add_row("(role)", fact.name, f"[green]{value}[/]" if fact.ok else value)
    stdout.print(others)
    figures = report.figures()
    stdout.print(
        f"{figures['as_expected']}/{figures['checks']} checks as expected; DDL refused with "
        f"42501: {figures['ddl_refused_42501']}/{figures['ddl_attempts']}; table GRANTs that "
        f"granted nothing: {figures['table_grant_nothing_granted']}/"
        f"{figures['table_grant_attempts']}."
    )
    for attempt in report.mismatches:
        stdout.print(
            f"[red]✗ {escape(attempt.target)}: {attempt.action}[/] expected {attempt.expected}, "
            f"got {attempt.outcome} {attempt.sqlstate or ''} {escape(attempt.message)}"
        )
    stdout.print("[green]app role verified[/]" if report.ok else "[red]app role NOT as expected[/]")


def truncate(
    yes: Annotated[bool, typer.Option("--yes", help="Really empty the tables.")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List the tables and row counts; change nothing.")
    ] = False,
    include_migrations: Annotated[
        bool,
        typer.Option("--include-migrations", help="Also empty alembic_version (kept by default)."),
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """Empty every authkeep table on PostgreSQL (seed 000's nuke tool, guarded).

    Uses DATABASE_URL_ADMIN (else the server's DSN chain). Lists the tables it would empty,
    with their row counts, and refuses (exit 2) without --yes; --dry-run lists and exits 0.
    One `TRUNCATE … RESTART IDENTITY CASCADE` in one transaction: all or nothing. Tables in other
    schemas that reference these through foreign keys are listed too, so CASCADE empties nothing
    unlisted. alembic_version is kept unless --include-migrations. SQLite: exit 2 (delete the
    file instead). Take a backup first (`authkeep db backup`).

    Example: `DATABASE_URL_ADMIN=postgresql://admin:…@db:5432/app authkeep db truncate --dry-run`
    """
    out = Output(json_output)
    settings = load_settings_or_fail(out)
    execute = yes and not dry_run

    async def work(progress: ProgressCallback) -> ops_truncate.TruncateReport:
        async with _admin_database(settings, SQLITE_TRUNCATE) as (database, _):
            return await ops_truncate.truncate_tables(
                database.engine,
                execute=execute,
                include_migrations=include_migrations,
                progress=progress,
            )

    with progress_bar(out) as progress:
        report = _run(out, lambda: work(progress))
    if not execute and not dry_run:
        if not out.json:
            stdout.print(_truncate_table(report, "Would empty"))
        out.fail(
            f"Refused without --yes: {len(report.tables)} table(s), {report.rows} row(s) would "
            "be emptied. Re-run with --yes (or --dry-run to only list).",
            code="confirmation_required",
            exit_code=EXIT_USAGE,
            data=report.as_dict(),
        )
    verb = "Emptied" if report.truncated else "Would empty (dry run, nothing changed)"
    out.result({"ok": True, "dry_run": dry_run, **report.as_dict()}, _truncate_text(report, verb))


def _truncate_table(report: ops_truncate.TruncateReport, verb: str) -> Table:
    table = Table("table", "rows", title=f"{verb}: {len(report.tables)} table(s)")
    for name, rows in report.tables.items():
        table.add_row(escape(name), str(rows))
    return table


def _truncate_text(report: ops_truncate.TruncateReport, verb: str) -> str:
    lines = [f"{verb}: {len(report.tables)} table(s), {report.rows} row(s)"]
    lines += [f"  {escape(name)}: {rows}" for name, rows in report.tables.items()]
    if report.kept:
        lines.append(f"kept: {', '.join(report.kept)} (schema stays at its revision)")
    return "\n".join(lines)
