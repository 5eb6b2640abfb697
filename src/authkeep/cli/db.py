"""`authkeep db …`: the database doctor, migrations and their status."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import typer
from rich.table import Table

from authkeep.cli.output import JsonOption, Output, load_settings_or_fail, run, stdout
from authkeep.config import Settings
from authkeep.core import migrate as migrations
from authkeep.core.bootstrap import select_admin_database
from authkeep.core.db import Database
from authkeep.core.dbcheck import CheckReport, check_database

app = typer.Typer(help="Check, migrate and inspect the database.", no_args_is_help=True)

T = TypeVar("T")


async def _with_admin_database(settings: Settings, work: Callable[[Database], Awaitable[T]]) -> T:
    selection = await select_admin_database(settings)
    # Schema work may legitimately run longer than the app's statement timeout.
    unlimited = settings.model_copy(update={"db_statement_timeout_ms": 0})
    database = Database.open(selection.candidate, unlimited)
    try:
        return await work(database)
    finally:
        await database.dispose()


def migrate(json_output: JsonOption = False) -> None:
    """Upgrade the schema to head: non-interactive, idempotent, verified.

    Uses DATABASE_URL_ADMIN when set, else the same DSN chain as the server. Afterwards every
    expected table is checked. Exit 0 on success (including "nothing to do"), 1 on any failure.

    Example: `DATABASE_URL_ADMIN=postgresql://admin:…@db:5432/app authkeep db migrate`
    """
    out = Output(json_output)
    settings = load_settings_or_fail(out)

    async def work(database: Database) -> migrations.MigrationReport:
        report = await migrations.upgrade(database.engine)
        # Tables a migration created become reachable by the app role (no-op without one).
        from authkeep.ops.roles import apply_grants

        await apply_grants(database.engine, settings.db_app_role)
        return report

    report = run(out, lambda: _with_admin_database(settings, work))
    data = {
        "ok": True,
        "changed": report.changed,
        "before": report.before,
        "after": report.after,
        "head": report.head,
    }
    if report.changed:
        text = (
            f"[green]Migrated[/] {report.before or '(empty)'} → {report.after}; "
            "all expected tables present."
        )
    else:
        text = (
            f"Nothing to do: the schema is already at head ({report.head}); "
            "all expected tables present."
        )
    out.result(data, text)


app.command("migrate")(migrate)


def init_auth_db(json_output: JsonOption = False) -> None:
    """Create or upgrade authkeep's tables (seed 000's `init_auth_db`; same as `db migrate`)."""
    migrate(json_output)


@app.command("status")
def status(json_output: JsonOption = False) -> None:
    """Show the current and the head migration revision. Exit 1 when not at head.

    Example: `authkeep db status --json`
    """
    out = Output(json_output)
    settings = load_settings_or_fail(out)

    async def work(database: Database) -> migrations.SchemaState:
        return await migrations.schema_state(database.engine)

    state = run(out, lambda: _with_admin_database(settings, work))
    out.result(
        {"ok": state.at_head, **state.as_dict()},
        f"current: {state.current or '(empty database)'}\nhead:    {state.head}\n"
        + (
            "[green]at head[/]" if state.at_head else "[yellow]behind: run `authkeep db migrate`[/]"
        ),
    )
    if not state.at_head:
        raise typer.Exit(1)


def _status_line(state: migrations.SchemaState) -> str:
    if state.at_head:
        return "[green]at head[/]"
    if not state.known:
        return "[red]unknown revision: migrated by a newer authkeep; deploy that release[/]"
    return "[yellow]behind: run `authkeep db migrate`[/]"


@app.command("check")
def check(json_output: JsonOption = False) -> None:
    """Diagnose the database: which DSN variable won and why, each candidate's probe, server
    version, TLS, migration state, and a one-line fix for every problem.

    Exit 0 only when the database is usable by this version.

    Example: `DATABASE_URL_INTERNAL=… DATABASE_URL=… authkeep db check --json`
    """
    out = Output(json_output)
    settings = load_settings_or_fail(out, logs=False)
    report = run(out, lambda: check_database(settings))
    out.result(report.as_dict())
    if not json_output:
        _print_check(report)
    if not report.ok:
        raise typer.Exit(1)


def _print_check(report: CheckReport) -> None:
    stdout.print(f"[bold]DSN precedence[/]: {report.precedence}")
    stdout.print(f"production: {report.production}   strict bootstrap: {report.strict}")
    table = Table("source", "dsn", "result", "server", "tls", "ms")
    for probe in report.probes:
        result = "[green]ok[/]" if probe.ok else f"[red]{probe.failure}[/]: {probe.message}"
        table.add_row(
            probe.candidate.source,
            probe.candidate.display,
            result,
            probe.server_version or "",
            "" if probe.tls is None else str(probe.tls),
            f"{probe.elapsed_ms:.0f}",
        )
    stdout.print(table)
    for probe in report.probes:
        if not probe.ok:
            stdout.print(f"  fix for {probe.candidate.source}: {probe.fix}")
    if report.selected is not None:
        stdout.print(
            f"selected: {report.selected.candidate.display} ({report.selected.candidate.source})"
        )
    if report.schema is not None:
        stdout.print(
            f"schema: current {report.schema.current or '(empty)'}, head {report.schema.head}"
        )
    for problem in report.problems:
        stdout.print(f"[red]✗ {problem.kind}[/]: {problem.message}\n  fix: {problem.fix}")
    stdout.print("[green]database usable[/]" if report.ok else "[red]database not usable[/]")


from authkeep.cli import db_backup  # noqa: E402

app.command("backup")(db_backup.backup)
app.command("restore")(db_backup.restore)
app.command("copy")(db_backup.copy)

# The app role and the guarded truncate (issue "Operations").
from authkeep.cli import db_roles  # noqa: E402

app.command("roles")(db_roles.roles)
app.command("truncate")(db_roles.truncate)
