"""The DSN doctor behind `authkeep db check`: which variable won and why, every probe, the
server, TLS and the migration state, each problem with a one-line fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from authkeep.config import Settings
from authkeep.core import migrate
from authkeep.core.bootstrap import ProbeResult, probe
from authkeep.core.db import Database
from authkeep.core.dsn import candidates, default_sqlite, primary_source


@dataclass
class Problem:
    kind: str
    message: str
    fix: str

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "message": self.message, "fix": self.fix}


@dataclass
class CheckReport:
    """Everything `db check` found; `ok` means the database is usable by this version."""

    precedence: str
    production: bool
    strict: bool
    probes: list[ProbeResult] = field(default_factory=list)
    selected: ProbeResult | None = None
    schema: migrate.SchemaState | None = None
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.selected is not None and not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "precedence": self.precedence,
            "production": self.production,
            "strict_bootstrap": self.strict,
            "selected": self.selected.as_dict() if self.selected else None,
            "candidates": [p.as_dict() for p in self.probes],
            "schema": self.schema.as_dict() if self.schema else None,
            "problems": [p.as_dict() for p in self.problems],
        }


def explain_precedence(settings: Settings) -> str:
    primary = primary_source(settings)
    chain = "DATABASE_URL_INTERNAL → DATABASE_URL_LOCAL → primary → DATABASE_URL_REMOTE"
    if primary is None:
        if candidates(settings):
            return f"No AUTH_DATABASE_URI or DATABASE_URL; the chain's other variables: {chain}."
        refusal = (
            "; production refuses to start without one."
            if settings.is_production
            else "; development uses the SQLite file in the data dir."
        )
        return f"No database variable is set{refusal} Chain: {chain}."
    why = (
        "AUTH_DATABASE_URI is set, so it is the primary and DATABASE_URL is ignored"
        if primary[0] == "AUTH_DATABASE_URI" and settings.database_url is not None
        else f"{primary[0]} is the primary"
    )
    return f"{why}. The first candidate that answers wins, in this order: {chain}."


async def check_database(settings: Settings) -> CheckReport:
    """Probe every candidate, then inspect the first that answered."""
    report = CheckReport(
        explain_precedence(settings), settings.is_production, settings.strict_bootstrap
    )
    chain = candidates(settings)
    if not chain:
        if settings.is_production:
            report.problems.append(
                Problem(
                    "no_dsn",
                    "No database is configured in production.",
                    "Set AUTH_DATABASE_URI or DATABASE_URL "
                    "(e.g. `fly secrets set DATABASE_URL=…`).",
                )
            )
            return report
        chain = [default_sqlite(settings.data_dir)]
    for candidate in chain:
        result = await probe(candidate, settings.db_probe_timeout)
        report.probes.append(result)
        if result.ok and report.selected is None:
            report.selected = result
    for result in report.probes:
        if not result.ok and report.selected is None:
            report.problems.append(
                Problem(
                    result.failure.value if result.failure else "error",
                    f"{result.candidate.source}: {result.message}",
                    result.fix,
                )
            )
    if report.selected is None:
        return report

    database = Database.open(report.selected.candidate, settings)
    try:
        report.schema = await migrate.schema_state(database.engine)
    finally:
        await database.dispose()
    if not report.schema.known:
        report.problems.append(
            Problem(
                "schema_unknown",
                f"The database is at revision {report.schema.current}, unknown to this version.",
                "Deploy the authkeep release that migrated it, or a newer one.",
            )
        )
    elif not report.schema.at_head:
        report.problems.append(
            Problem(
                "schema_behind",
                f"Schema at {report.schema.current or 'nothing (empty database)'}, head is "
                f"{report.schema.head}.",
                "Run `authkeep db migrate` (with DATABASE_URL_ADMIN set if the app role cannot "
                "change the schema).",
            )
        )
    return report
