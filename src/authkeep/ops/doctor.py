"""`authkeep doctor`: seed 002's production checklist as a command.

Each item is pass / warn / fail with the fix in one line. The command exits non-zero when any
item fails. Nothing here changes anything.
"""

from __future__ import annotations

import enum
import ipaddress
import json
import socket
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from authkeep.config import Settings
from authkeep.core import migrate
from authkeep.core.bootstrap import ProbeResult
from authkeep.core.clientip import parse_networks
from authkeep.core.dbcheck import check_database
from authkeep.core.secrets import MIN_SECRET_LENGTH, REQUIRED_SECRETS, SECRETS_FILE

BACKUP_MAX_AGE = timedelta(hours=26)


class Status(enum.StrEnum):
    PASS = "pass"  # noqa: S105 (a checklist status)
    WARN = "warn"
    FAIL = "fail"


@dataclass
class Item:
    name: str
    status: Status
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return {
            "name": self.name,
            "status": self.status.value,
            "detail": self.detail,
            "fix": self.fix,
        }


@dataclass
class Report:
    items: list[Item] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(item.status is not Status.FAIL for item in self.items)

    def add(self, name: str, status: Status, detail: str, fix: str = "") -> None:
        self.items.append(Item(name, status, detail, fix))

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "items": [item.as_dict() for item in self.items]}


def _severity(settings: Settings) -> Status:
    """What a production-only problem counts as: a failure in production, a warning elsewhere."""
    return Status.FAIL if settings.is_production else Status.WARN


def check_mode(settings: Settings, report: Report) -> None:
    if settings.is_production:
        report.add("production mode", Status.PASS, "AUTHKEEP_ENV=production (or running on Fly)")
    else:
        report.add(
            "production mode",
            Status.WARN,
            "running in development mode",
            "Set AUTHKEEP_ENV=production on servers.",
        )


def _kept_in_data_dir(settings: Settings, name: str) -> bool:
    path = settings.data_dir / SECRETS_FILE
    try:
        return name in json.loads(path.read_text())
    except (OSError, ValueError):
        return False


def check_secrets(settings: Settings, report: Report) -> None:
    for name, variable in REQUIRED_SECRETS.items():
        value = getattr(settings, name)
        if value is None and not settings.is_production and _kept_in_data_dir(settings, name):
            report.add(
                f"secret {variable}",
                Status.PASS,
                f"generated in {settings.data_dir / SECRETS_FILE} (standalone)",
            )
        elif value is None:
            report.add(
                f"secret {variable}",
                _severity(settings),
                "not set",
                f"Set {variable} (generate: authkeep keygen / secrets.token_urlsafe(48)).",
            )
        elif name == "secret_key" and len(value.get_secret_value()) < MIN_SECRET_LENGTH:
            report.add(
                f"secret {variable}",
                Status.FAIL,
                f"shorter than {MIN_SECRET_LENGTH} characters",
                f"Generate a new {variable}.",
            )
        else:
            report.add(f"secret {variable}", Status.PASS, "set")


def check_strict(settings: Settings, report: Report) -> None:
    if settings.strict_bootstrap:
        report.add("strict database bootstrap", Status.PASS, "on: no silent fallback")
    else:
        report.add(
            "strict database bootstrap",
            _severity(settings),
            "off: an unreachable database only logs a warning",
            "Unset AUTHKEEP_STRICT_DB_BOOTSTRAP (production turns it on) or set it to 1.",
        )


def check_proxies_and_origins(settings: Settings, report: Report) -> None:
    if any(network.prefixlen == 0 for network in parse_networks(settings.trusted_proxies)):
        report.add(
            "trusted proxies",
            Status.FAIL,
            "a trusted proxy range covers every address",
            "List only your proxies in AUTHKEEP_TRUSTED_PROXIES (e.g. 127.0.0.1/32).",
        )
    else:
        report.add(
            "trusted proxies",
            Status.PASS,
            ", ".join(settings.trusted_proxies) or "none: X-Forwarded-For is ignored",
        )
    if "*" in settings.trusted_origins:
        report.add(
            "trusted origins",
            Status.FAIL,
            "TRUSTED_ORIGINS contains *",
            "List your front-end origins exactly, e.g. https://app.example.com.",
        )
    else:
        report.add("trusted origins", Status.PASS, ", ".join(settings.trusted_origins) or "none")


def check_admin_mfa(settings: Settings, report: Report) -> None:
    """CHK-AC-06: in production, admin powers without a second factor are a warning."""
    if settings.admin_mfa_required:
        report.add("admin MFA", Status.PASS, "on: admin routes need MFA on the admin's account")
    elif settings.is_production:
        report.add(
            "admin MFA",
            Status.WARN,
            "off: an admin whose account has no MFA can use the admin API",
            "Have every admin turn on MFA, then set AUTHKEEP_ADMIN_MFA_REQUIRED=true.",
        )
    else:
        report.add("admin MFA", Status.PASS, "off (development)")


def _is_private_host(host: str | None) -> bool:
    if not host or host.startswith("/"):
        return True  # a unix socket
    if host.rstrip(".").endswith((".internal", ".flycast")):
        return True
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return True  # unresolvable here: the probe reports it
    addresses = {ipaddress.ip_address(info[4][0]) for info in infos}
    return all(a.is_private or a.is_loopback for a in addresses)


def check_network(selected: ProbeResult, settings: Settings, report: Report) -> None:
    url = selected.candidate.url
    if selected.candidate.is_sqlite:
        report.add("database network", Status.PASS, "SQLite file: not on the network")
        return
    private = _is_private_host(url.host)
    if private:
        report.add("database network", Status.PASS, f"{url.host} is loopback or private")
    else:
        report.add(
            "database network",
            Status.WARN,
            f"{url.host} is a public address: the database may be reachable from the internet",
            "Keep PostgreSQL on a private network or behind a firewall "
            "(seed 002: never expose 5432).",
        )
    if selected.tls or private:
        report.add(
            "database TLS",
            Status.PASS,
            "TLS in use" if selected.tls else "private network, TLS not required",
        )
    else:
        report.add(
            "database TLS",
            Status.FAIL,
            "connection to a public host without TLS",
            "Add ?sslmode=require (or verify-full) to the DSN.",
        )


async def check_database_items(settings: Settings, report: Report) -> None:
    from authkeep.core.db import Database
    from authkeep.ops.roles import check_runtime_role

    db_report = await check_database(settings)
    selected = db_report.selected
    if selected is None:
        problems = "; ".join(f"{p.message} — {p.fix}" for p in db_report.problems)
        report.add(
            "database reachable",
            Status.FAIL,
            problems or "no database answered",
            "Run `authkeep db check` for details.",
        )
        return
    report.add(
        "database reachable",
        Status.PASS,
        f"{selected.candidate.display} ({selected.candidate.source})",
    )
    schema = db_report.schema
    if schema is not None and schema.at_head:
        report.add("schema at head", Status.PASS, f"revision {schema.head}")
    else:
        report.add(
            "schema at head",
            Status.FAIL,
            f"at {schema.current if schema else '?'}, head {migrate.head_revision()}",
            "Run `authkeep db migrate`.",
        )
    check_network(selected, settings, report)
    if selected.candidate.is_sqlite:
        return
    database = Database.open(selected.candidate, settings)
    try:
        role = await check_runtime_role(database.engine)
    finally:
        await database.dispose()
    if role.is_superuser or role.owns_tables or role.can_create_in_schema:
        what = (
            "a superuser"
            if role.is_superuser
            else "the owner of the tables"
            if role.owns_tables
            else "a role that can create tables"
        )
        report.add(
            "app database role",
            _severity(settings),
            f"the server connects as {what}",
            "Run `authkeep db roles` with DATABASE_URL_ADMIN, then point DATABASE_URL "
            "at the limited app role.",
        )
    else:
        report.add(
            "app database role", Status.PASS, "limited role: not superuser, not owner, no CREATE"
        )


def check_backups(settings: Settings, report: Report) -> None:
    from authkeep.ops.backups import latest_verified_backup

    record = latest_verified_backup(settings)
    if record is None:
        report.add(
            "verified backup",
            _severity(settings),
            "no verified backup found",
            "Schedule `authkeep db backup --verify` (e.g. nightly).",
        )
        return
    # The age of the data in the backup, not of the drill: an old backup verified today is
    # still an old backup.
    age = timedelta(seconds=record.age_seconds())
    hours = age.total_seconds() / 3600
    if age > BACKUP_MAX_AGE:
        report.add(
            "verified backup",
            Status.WARN,
            f"newest verified backup is {hours:.0f} h old",
            "Schedule `authkeep db backup --verify` at least daily.",
        )
    else:
        report.add("verified backup", Status.PASS, f"newest verified backup is {hours:.1f} h old")


async def run_doctor(settings: Settings) -> Report:
    """Every checklist item, in the order an operator would fix them."""
    report = Report()
    check_mode(settings, report)
    check_secrets(settings, report)
    check_strict(settings, report)
    check_proxies_and_origins(settings, report)
    check_admin_mfa(settings, report)
    await check_database_items(settings, report)
    check_backups(settings, report)
    return report
