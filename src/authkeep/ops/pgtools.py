"""pg_dump and pg_restore: finding them, checking their version, running them without leaking.

The password reaches the tools only through the subprocess's `PGPASSWORD`; the host, port, user
and SSL mode go through `PG*` variables too, so no argv (visible in `ps`) and no log line ever
carries a credential. Ambient `PG*` variables are dropped first, so only the DSN authkeep chose
is used.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import URL

from authkeep.errors import AuthkeepError

INSTALL_HINT = (
    "Install the PostgreSQL client tools for your server's major version (Debian/Ubuntu: "
    "`apt-get install postgresql-client-<major>`; Alpine: `apk add postgresql<major>-client`; "
    "macOS: `brew install libpq`), or point authkeep at them with `--pg-bin DIR` or "
    "AUTHKEEP_PG_BIN=DIR."
)
_VERSION = re.compile(r"\b(\d+)(?:\.\d+)*")
_STDERR_TAIL = 800


class PgToolsMissing(AuthkeepError):
    code = "pg_tools_missing"
    detail = f"pg_dump/pg_restore not found. {INSTALL_HINT}"


class PgVersionMismatch(AuthkeepError):
    code = "pg_version_mismatch"


class PgToolFailed(AuthkeepError):
    code = "pg_tool_failed"


@dataclass(frozen=True)
class PgTool:
    """One client program, found and asked for its version."""

    name: str
    path: Path
    version: str
    major: int


def find_tool(name: str, pg_bin: Path | None = None) -> PgTool:
    """`pg_bin/<name>` when a directory is given (`--pg-bin`, AUTHKEEP_PG_BIN), else PATH."""
    if pg_bin is not None:
        candidate = pg_bin / name
        if not (candidate.is_file() and os.access(candidate, os.X_OK)):
            raise PgToolsMissing(f"{name} was not found in {pg_bin}. {INSTALL_HINT}")
        path = candidate
    else:
        found = shutil.which(name)
        if found is None:
            raise PgToolsMissing(f"{name} was not found on PATH. {INSTALL_HINT}")
        path = Path(found)
    try:
        out = subprocess.run(
            [str(path), "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        raise PgToolsMissing(f"{path} did not run. {INSTALL_HINT}") from None
    match = _VERSION.search(out)
    if match is None:
        raise PgToolsMissing(f"{path} did not report a version. {INSTALL_HINT}")
    return PgTool(name, path, match.group(0), int(match.group(1)))


def require_compatible(tool: PgTool, server_version_num: int) -> None:
    """Refuse a client older than the server: pg_dump would abort half-way with a bare error."""
    server_major = server_version_num // 10_000
    if tool.major < server_major:
        raise PgVersionMismatch(
            f"{tool.name} {tool.version} ({tool.path}) is older than the server "
            f"(PostgreSQL {server_major}) and cannot work with it. Install the version "
            f"{server_major} client tools (Debian/Ubuntu: `apt-get install "
            f"postgresql-client-{server_major}`, then `--pg-bin "
            f"/usr/lib/postgresql/{server_major}/bin`), or set AUTHKEEP_PG_BIN to them."
        )


def libpq_env(url: URL, application: str) -> dict[str, str]:
    """The subprocess environment that points libpq at `url`, password included."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env["PGHOST"] = url.host or "localhost"
    env["PGPORT"] = str(url.port or 5432)
    env["PGAPPNAME"] = application
    if url.username:
        env["PGUSER"] = url.username
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    for parameter, variable in (("sslmode", "PGSSLMODE"), ("connect_timeout", "PGCONNECT_TIMEOUT")):
        value = url.query.get(parameter)
        if value is not None:
            env[variable] = value if isinstance(value, str) else value[-1]
    return env


async def run_tool(tool: PgTool, args: list[str], env: dict[str, str]) -> None:
    """Run the tool to completion; kill it if the caller is cancelled; raise on a non-zero exit."""
    process = await asyncio.create_subprocess_exec(
        str(tool.path),
        *args,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, stderr = await process.communicate()
    except BaseException:
        if process.returncode is None:
            process.kill()
            await process.wait()
        raise
    if process.returncode != 0:
        # The tools print connection errors and SQL failures, never the password (not in argv).
        tail = stderr.decode("utf-8", "replace").strip()[-_STDERR_TAIL:]
        raise PgToolFailed(f"{tool.name} failed (exit {process.returncode}): {tail}")
