"""`authkeep db backup | restore | copy`: thin wrappers over `authkeep.ops`.

Exit codes: 0 done and verified, 1 failed (including a drill or a verification that found a
difference), 2 refused (no `--yes`, a schema head that does not match, a file in use) or bad usage.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.table import Table

from authkeep.cli.output import (
    EXIT_USAGE,
    JsonOption,
    Output,
    load_settings_or_fail,
    progress_bar,
    run,
    stdout,
)
from authkeep.ops import backups
from authkeep.ops import restore as restores
from authkeep.ops.copy import CopyReport, copy_database
from authkeep.ops.restore import RestoreRefused, VerifyReport

T = TypeVar("T")

PgBinOption = Annotated[
    Path | None,
    typer.Option(
        "--pg-bin",
        envvar="AUTHKEEP_PG_BIN",
        help="Directory holding pg_dump/pg_restore (default: PATH). Env: AUTHKEEP_PG_BIN.",
        file_okay=False,
    ),
]


def _run(out: Output, work: Callable[[], Awaitable[T]]) -> T:
    """`run`, with this group's refusals exiting 2."""
    return run(out, work, refusals=(RestoreRefused,))


def _verify_lines(report: VerifyReport) -> str:
    if report.ok:
        rows = sum(d.rows for d in report.actual.tables.values())
        return (
            f"[green]verified[/] {report.file} in {report.target}: {rows} rows in "
            f"{len(report.actual.tables)} tables match the manifest, head {report.actual.head}, "
            f"integrity {report.integrity} ({report.seconds:.2f} s)"
        )
    return f"[red]verification failed[/] for {report.file}:\n  " + "\n  ".join(report.problems)


def backup(
    directory: Annotated[
        Path | None,
        typer.Option(
            "--dir",
            help="Where backups go (default AUTHKEEP_BACKUP_DIR, else <data dir>/backups).",
            file_okay=False,
        ),
    ] = None,
    keep: Annotated[
        int | None,
        typer.Option(
            "--keep", min=1, help="Keep this many newest backups (default AUTHKEEP_BACKUP_KEEP, 7)."
        ),
    ] = None,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify", help="Then run a restore drill into scratch space and record verified_at."
        ),
    ] = False,
    pg_bin: PgBinOption = None,
    json_output: JsonOption = False,
) -> None:
    """Write a timestamped, compressed backup and record it in manifest.json.

    PostgreSQL: pg_dump --format=custom on the admin DSN (DATABASE_URL_ADMIN, else the server's
    DSN chain), with row counts and checksums taken in the same snapshot. SQLite: the online
    backup API, gzipped. Exit 0 ok, 1 failed (or the drill found a difference).

    Example: `authkeep db backup --verify --keep 14`
    """
    out = Output(json_output)
    settings = load_settings_or_fail(out)
    with progress_bar(out) as progress:
        result = _run(
            out,
            lambda: backups.create_backup(
                settings,
                directory=directory,
                keep=keep,
                pg_bin=pg_bin,
                verify=verify,
                progress=progress,
            ),
        )
    text = (
        f"[green]backup written[/] {result.path} ({result.record.size_bytes} bytes, head "
        f"{result.record.head}, {sum(d.rows for d in result.record.tables.values())} rows, "
        f"{result.seconds:.2f} s)"
    )
    if result.removed:
        text += f"\nretention removed: {', '.join(result.removed)}"
    if result.drill is not None:
        text += "\n" + _verify_lines(result.drill)
    out.result(result.as_dict(), text)
    if not result.ok:
        raise typer.Exit(1)


def restore(
    file: Annotated[Path, typer.Argument(help="A backup written by `authkeep db backup`.")],
    yes: Annotated[bool, typer.Option("--yes", help="Really replace the database.")] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Restore even if the backup's schema head differs.")
    ] = False,
    drill: Annotated[
        bool,
        typer.Option(
            "--drill",
            help="Only a drill: restore into scratch space, compare with the "
            "manifest, record verified_at. Changes nothing else; needs no --yes.",
        ),
    ] = False,
    pg_bin: PgBinOption = None,
    json_output: JsonOption = False,
) -> None:
    """Restore a backup over the configured database (destructive: needs --yes), then check it.

    Refuses a backup taken at another schema head than this version's unless --force. SQLite:
    stop the server first (the file must not be in use). PostgreSQL: one transaction with
    pg_restore --clean. Afterwards row counts, checksums and head are compared with the
    manifest. Exit 0 ok, 1 failed, 2 refused.

    Example: `authkeep db restore --yes backups/authkeep-postgresql-20250101T030000Z-0002.dump`
    """
    out = Output(json_output)
    settings = load_settings_or_fail(out)
    if drill:
        with progress_bar(out) as progress:
            report = _run(
                out, lambda: restores.drill(settings, file, pg_bin=pg_bin, progress=progress)
            )
        _finish(out, report, "drill")
        return
    plan = _run(out, lambda: restores.plan_restore(settings, file, force=force))
    if not yes:
        out.fail(
            f"{plan.describe()} Run again with --yes to do it.",
            code="confirmation_required",
            exit_code=EXIT_USAGE,
            data={"would_replace": plan.candidate.display, "current_rows": plan.current_rows},
        )
    with progress_bar(out) as progress:
        report = _run(
            out, lambda: restores.restore(settings, plan, pg_bin=pg_bin, progress=progress)
        )
    _finish(out, report, "restore")


def _finish(out: Output, report: VerifyReport, action: str) -> None:
    out.result({"action": action, **report.as_dict()}, _verify_lines(report))
    if not report.ok:
        raise typer.Exit(1)


def copy(
    source: Annotated[
        str,
        typer.Option(
            "--from",
            envvar="AUTHKEEP_COPY_FROM",
            help="Source DSN, e.g. sqlite:///data/authkeep.db. Env: AUTHKEEP_COPY_FROM.",
            show_default=False,
        ),
    ],
    target: Annotated[
        str,
        typer.Option(
            "--to",
            envvar="AUTHKEEP_COPY_TO",
            help="Target DSN (migrated to head). Env "
            "AUTHKEEP_COPY_TO keeps the password out of the process list.",
            show_default=False,
        ),
    ],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show tables and row counts; write nothing.")
    ] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, max=50_000)] = 1_000,
    json_output: JsonOption = False,
) -> None:
    """Copy every table from one database to another (SQLite → PostgreSQL), then verify.

    Both must be at this version's head (`authkeep db migrate` first). One transaction on the
    target; rows already there are skipped (ON CONFLICT DO NOTHING), so running it twice adds
    nothing. Then counts and checksums are compared per table. Exit 0 verified, 1 failed.

    Example: `AUTHKEEP_COPY_TO=postgresql://admin:…@db:5432/app authkeep db copy --from sqlite:///data/authkeep.db`
    """
    out = Output(json_output)
    settings = load_settings_or_fail(out)
    with progress_bar(out) as progress:
        report = _run(
            out,
            lambda: copy_database(
                settings, source, target, dry_run=dry_run, batch_size=batch_size, progress=progress
            ),
        )
    out.result(report.as_dict())
    if not out.json:
        _print_copy(report)
    if not report.ok:
        raise typer.Exit(1)


def _print_copy(report: CopyReport) -> None:
    table = Table("table", "source rows", "target rows before", "added")
    for item in report.plan:
        added = "" if report.dry_run else str(report.added.get(item.name, 0))
        table.add_row(item.name, str(item.source_rows), str(item.target_rows), added)
    stdout.print(f"{report.source} → {report.target}")
    stdout.print(table)
    if report.dry_run:
        stdout.print("[yellow]dry run[/]: nothing was written.")
    elif report.ok:
        stdout.print(
            f"[green]copied and verified[/]: counts and checksums equal ({report.seconds:.2f} s)"
        )
    else:
        stdout.print("[red]verification failed[/]:\n  " + "\n  ".join(report.problems))
