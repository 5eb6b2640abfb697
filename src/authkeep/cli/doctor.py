"""`authkeep doctor`: the production checklist."""

from __future__ import annotations

import asyncio

import typer
from rich.table import Table

from authkeep.cli.output import JsonOption, Output, stdout
from authkeep.config import load_settings
from authkeep.errors import AuthkeepError
from authkeep.ops.doctor import Status, run_doctor

_STYLE = {
    Status.PASS: "[green]pass[/]",
    Status.WARN: "[yellow]warn[/]",
    Status.FAIL: "[red]fail[/]",
}


def doctor(json_output: JsonOption = False) -> None:
    """Check this deployment against the production checklist: secrets set, strict bootstrap,
    app role not superuser/owner, database not public, TLS where expected, no trusted-proxy
    range covering every address, backups recent and verified. Exit 1 when any item fails.

    Example: `AUTHKEEP_ENV=production authkeep doctor --json`
    """
    out = Output(json_output)
    try:
        report = asyncio.run(run_doctor(load_settings()))
    except AuthkeepError as exc:
        out.fail_with(exc)
    out.result(report.as_dict())
    if not json_output:
        table = Table("check", "status", "detail", "fix")
        for item in report.items:
            table.add_row(item.name, _STYLE[item.status], item.detail, item.fix)
        stdout.print(table)
        stdout.print("[green]ready[/]" if report.ok else "[red]not ready[/]")
    if not report.ok:
        raise typer.Exit(1)
