"""`authkeep deploy …`: write deploy files for a target, and check a deployed server."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from authkeep.cli.output import EXIT_USAGE, JsonOption, Output, stdout
from authkeep.deploy import check as checks
from authkeep.deploy import render
from authkeep.errors import AuthkeepError

app = typer.Typer(help="Write deploy files; check a deployed server.", no_args_is_help=True)


class Target(enum.StrEnum):
    FLY = "fly"
    COMPOSE = "compose"
    SYSTEMD = "systemd"


_DEFAULTS = render.DeployParams()


@app.command("init")
def init(
    target: Annotated[Target, typer.Option(help="Where authkeep will run.")],
    directory: Annotated[Path, typer.Option("--dir", help="Where to write the files.")] = Path(),
    force: Annotated[bool, typer.Option(help="Overwrite files that already exist.")] = False,
    app_name: Annotated[str, typer.Option(help="Fly app / unit / project name.")] = (
        _DEFAULTS.app_name
    ),
    domain: Annotated[str, typer.Option(help="The public hostname.")] = _DEFAULTS.domain,
    port: Annotated[int, typer.Option(help="Port authkeep listens on.")] = _DEFAULTS.port,
    image: Annotated[str, typer.Option(help="Image name (compose).")] = _DEFAULTS.image,
    user: Annotated[str, typer.Option(help="Unix user the server runs as.")] = _DEFAULTS.user,
    region: Annotated[str, typer.Option(help="Fly primary region.")] = _DEFAULTS.region,
    install_dir: Annotated[
        str, typer.Option(help="Checkout with its .venv (systemd).")
    ] = _DEFAULTS.install_dir,
    json_output: JsonOption = False,
) -> None:
    """Write ready-to-edit deploy files for fly, compose or systemd. Never overwrites a file
    unless --force is given (exit 2 otherwise, and nothing is written).

    Example: `authkeep deploy init --target compose --domain auth.example.com`
    """
    out = Output(json_output)
    params = render.DeployParams(
        app_name=app_name,
        domain=domain,
        port=port,
        image=image,
        user=user,
        region=region,
        install_dir=install_dir,
    )
    try:
        written = render.write(render.render(target.value, params), directory, force=force)
    except AuthkeepError as exc:
        out.fail_with(exc, exit_code=EXIT_USAGE)
    listing = "\n".join(f"  {path}" for path in written)
    out.result(
        {"ok": True, "target": target.value, "files": [str(path) for path in written]},
        f"[green]Wrote[/] {len(written)} files for {target.value}:\n{listing}\n"
        "Next: read docs/deploy.md, fill in the secrets, and deploy.",
    )


@app.command("check")
def check(
    url: Annotated[str, typer.Argument(help="Base URL of the deployed server.")],
    timeout: Annotated[float, typer.Option(help="Seconds per request.", min=0.1)] = 5.0,
    wait: Annotated[
        float, typer.Option(help="Keep retrying for up to this many seconds.", min=0)
    ] = 0.0,
    expect_version: Annotated[
        str | None, typer.Option(help="Fail unless the server runs this version.")
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Post-deploy checks: /health (200, status ok), /health/db (200) and /api/version.
    Exit 0 when all pass, 1 when any fails (each failure is named with its reason).

    Example: `authkeep deploy check http://127.0.0.1:8080 --wait 60`
    """
    out = Output(json_output)
    try:
        report = checks.wait_for_checks(
            url, timeout=timeout, wait=wait, expect_version=expect_version
        )
    except AuthkeepError as exc:
        out.fail_with(exc, exit_code=EXIT_USAGE)
    if not json_output:
        _print_table(report)
    if report.ok:
        out.result(report.as_dict(), f"[green]All checks passed[/] ({report.version}).")
        return
    reasons = "; ".join(result.detail for result in report.failures)
    out.fail(f"deploy check failed: {reasons}", code="check_failed", data=report.as_dict())


def _print_table(report: checks.CheckReport) -> None:
    table = Table(title=f"deploy check {report.url}")
    for column in ("check", "result", "detail", "ms"):
        table.add_column(column)
    for result in report.results:
        mark = "[green]ok[/]" if result.ok else "[red]FAILED[/]"
        table.add_row(result.name, mark, result.detail, f"{result.elapsed_ms:.0f}")
    stdout.print(table)
