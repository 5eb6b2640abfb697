"""How every command speaks: Rich text for people, `--json` for scripts, one `fail()` for both.

Exit codes scripts can trust: 0 success, 1 the operation failed, 2 bad usage or refused without
confirmation.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from sqlalchemy.exc import DBAPIError

from authkeep.config import Settings, load_settings
from authkeep.core.logs import setup_logging
from authkeep.errors import AuthkeepError

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object for scripts.")]

stdout = Console(highlight=False, soft_wrap=True)
stderr = Console(stderr=True, highlight=False, soft_wrap=True)

T = TypeVar("T")

# What the library's long operations call as they go: (description, done, total or None).
ProgressCallback = Callable[[str, int, int | None], None]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


@dataclass
class Output:
    """Where a command reports: Rich text or a single JSON document on stdout."""

    json: bool = False

    def result(self, data: dict[str, Any], text: str | None = None) -> None:
        if self.json:
            sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
        elif text is not None:
            stdout.print(text)

    def info(self, text: str) -> None:
        if not self.json:
            stdout.print(text)

    def fail(
        self,
        detail: str,
        *,
        code: str = "failed",
        exit_code: int = EXIT_FAILED,
        data: dict[str, Any] | None = None,
    ) -> NoReturn:
        """Report a failure the same way in text and JSON, then exit with `exit_code`."""
        if self.json:
            payload = {"ok": False, "error": code, "detail": detail, **(data or {})}
            sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")
        else:
            stderr.print(f"[bold red]error[/] ({code}): {detail}")
        raise typer.Exit(exit_code)

    def fail_with(self, error: AuthkeepError, *, exit_code: int = EXIT_FAILED) -> NoReturn:
        self.fail(error.detail, code=error.code, exit_code=exit_code)

    def fail_database(self, exc: DBAPIError) -> NoReturn:
        """A database refusal, by SQLSTATE only: the driver's own text can quote SQL."""
        sqlstate = getattr(exc.orig, "sqlstate", None) or "unknown"
        hint = (
            " The role lacks privileges: run schema commands with DATABASE_URL_ADMIN, or "
            "`authkeep db roles` to grant the app role."
            if sqlstate == "42501"
            else ""
        )
        self.fail(
            f"The database refused the operation (SQLSTATE {sqlstate}).{hint}",
            code="database_error",
        )


@contextmanager
def progress_bar(out: Output) -> Iterator[ProgressCallback]:
    """A Rich progress bar on stderr (hidden with --json), fed by a library's progress callback
    `(description, done, total)`."""
    bar = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=stderr,
        transient=True,
        disable=out.json,
    )
    task = bar.add_task("starting", total=None)

    def update(description: str, done: int, total: int | None) -> None:
        bar.update(task, description=escape(description), completed=done, total=total)

    with bar:
        yield update


def load_settings_or_fail(out: Output, *, logs: bool = True) -> Settings:
    """The settings, or a clean `config_error` exit; with `logs`, logging is set up from them."""
    try:
        settings = load_settings()
    except AuthkeepError as exc:
        out.fail_with(exc)
    if logs:
        setup_logging(settings)
    return settings


def run(
    out: Output,
    work: Callable[[], Awaitable[T]],
    *,
    refusals: tuple[type[AuthkeepError], ...] = (),
) -> T:
    """Run async library work for a command. `refusals` exit 2, other authkeep errors 1, and
    database refusals are reported by SQLSTATE only (`Output.fail_database`)."""
    try:
        return asyncio.run(work())  # type: ignore[arg-type]
    except refusals as exc:
        out.fail_with(exc, exit_code=EXIT_USAGE)
    except AuthkeepError as exc:
        out.fail_with(exc)
    except DBAPIError as exc:
        out.fail_database(exc)
