"""A real, throwaway PostgreSQL server for the test suite.

Tests need to stop/start the server (outage handling) and to fail password authentication,
so an embedded or mocked database is not enough: this runs genuine ``postgres`` binaries
with scram-sha-256 over TCP in a private directory.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import warnings
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import quote

_SYSTEM_USER = "authkeep-pg"
# Linux caps unix socket paths at 107 bytes; postgres appends "/.s.PGSQL.<port>" to the dir.
_MAX_SOCKET_DIR_LEN = 107 - len("/.s.PGSQL.65535")


def _find_bin_dir() -> Path:
    try:
        # Importing pgserver runs platformdirs, which warns when XDG_RUNTIME_DIR is unset;
        # under pytest's filterwarnings=error that warning would abort the import.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from pgserver._commands import POSTGRES_BIN_PATH
    except ImportError:

        def key(p: Path) -> tuple[int, ...]:
            return tuple(int(x) for x in p.parent.name.split(".") if x.isdigit())

        found = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=key)
        if not found:
            raise RuntimeError("no PostgreSQL binaries: install pgserver or postgresql") from None
        return found[-1]
    return Path(POSTGRES_BIN_PATH)


def _open_up(path: Path, *, tree: bool = False) -> None:
    """Add go+rx to every ancestor of ``path`` (and go+r / go+x to the tree if asked)."""
    targets = list(path.parents) + ([*path.rglob("*"), path] if tree else [])
    for p in targets:
        mode = p.stat().st_mode
        extra = 0o055 if p.is_dir() or mode & 0o100 else 0o044
        if mode & extra != extra:
            p.chmod(mode | extra)


class ThrowawayPostgres:
    """A private PostgreSQL cluster under ``base_dir``, listening on 127.0.0.1 only."""

    host = "127.0.0.1"

    def __init__(
        self,
        base_dir: Path,
        *,
        password: str,
        user: str = "authkeep_test",
        database: str = "authkeep_test",
    ) -> None:
        if "\n" in password or "\r" in password:
            raise ValueError("initdb --pwfile only reads the first line; no newlines allowed")
        self.base_dir = Path(base_dir).absolute()
        self.data_dir = self.base_dir / "data"
        self.log_file = self.base_dir / "postgres.log"
        self.password, self.user, self.database = password, user, database
        self.bin_dir = _find_bin_dir()
        # Picked once so URLs handed to the app stay valid across stop()/start().
        with socket.socket() as s:
            s.bind((self.host, 0))
            self._port: int = s.getsockname()[1]
        self.socket_dir = self.base_dir / "run"
        self._own_socket_tmp = len(str(self.socket_dir)) > _MAX_SOCKET_DIR_LEN
        if self._own_socket_tmp:  # deep pytest tmp dirs overflow sun_path; use a short dir
            self.socket_dir = Path(tempfile.mkdtemp(prefix="akpg-"))
        self._atexit_registered = False
        # initdb/pg_ctl refuse to run as root, so drop to a dedicated system user.
        self._run_as: pwd.struct_passwd | None = self._system_user() if os.geteuid() == 0 else None

    @property
    def port(self) -> int:
        """TCP port chosen at construction time, stable across restarts."""
        return self._port

    @cached_property
    def version(self) -> str:
        """Server major version, e.g. ``"16"``."""
        out = self._run(["postgres", "--version"]).stdout
        match = re.search(r"(\d+)", out)
        assert match, out
        return match.group(1)

    def url(self, database: str | None = None, *, password: str | None = None) -> str:
        """Connection URL for the test role (optionally another database / a wrong password)."""
        pw = quote(self.password if password is None else password, safe="")
        db = quote(database or self.database, safe="")
        return f"postgresql://{quote(self.user, safe='')}:{pw}@{self.host}:{self.port}/{db}"

    @property
    def admin_url(self) -> str:
        """Superuser URL (``postgres`` shares the test password; TCP always needs one)."""
        pw = quote(self.password, safe="")
        return f"postgresql://postgres:{pw}@{self.host}:{self.port}/postgres"

    def start(self) -> None:
        """initdb on first use, then start and wait until ready; no-op if already running."""
        if self.is_running():
            return
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        opts = (
            f"-c listen_addresses={self.host} -p {self.port} -k {shlex.quote(str(self.socket_dir))}"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            " -c max_connections=200"
        )
        # pg_ctl -w returns once postmaster.pid says "ready", i.e. TCP is accepting.
        args = ["pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-w", "-t", "60"]
        res = self._run([*args, "-o", opts, "start"], check=False)
        if res.returncode != 0:
            log = self.log_file.read_text(errors="replace") if self.log_file.exists() else ""
            raise RuntimeError(
                f"postgres failed to start: {res.stderr.strip()}\n--- log tail ---\n{log[-4000:]}"
            )
        marker = self.base_dir / ".bootstrapped"  # survives a failed first start
        if not marker.exists():
            self._bootstrap()
            marker.touch()
        if not self._atexit_registered:
            atexit.register(self.cleanup)
            self._atexit_registered = True

    def stop(self) -> None:
        """Fast shutdown (aborts open sessions) and wait until the server has exited."""
        if self.is_running():
            self._run(["pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "60", "stop"])

    def cleanup(self) -> None:
        """Stop the server (best effort) and delete everything it wrote."""
        # Best effort: this also runs from atexit, where raising helps nobody.
        with contextlib.suppress(OSError, subprocess.SubprocessError, RuntimeError):
            self.stop()
        shutil.rmtree(self.base_dir, ignore_errors=True)
        if self._own_socket_tmp:
            shutil.rmtree(self.socket_dir, ignore_errors=True)

    def is_running(self) -> bool:
        """True if pg_ctl sees a live postmaster for our data dir."""
        if not (self.data_dir / "PG_VERSION").exists():
            return False
        res = self._run(["pg_ctl", "-D", str(self.data_dir), "status"], check=False)
        return res.returncode == 0

    # -- internals ---------------------------------------------------------------------------

    def _initdb(self) -> None:
        for d in (self.base_dir, self.socket_dir):
            d.mkdir(parents=True, exist_ok=True)
        pwfile = self.base_dir / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self._run_as is not None:
            _open_up(self.base_dir)
            _open_up(self.bin_dir.parent, tree=True)
            for p in (self.base_dir, self.socket_dir, pwfile):
                os.chown(p, self._run_as.pw_uid, self._run_as.pw_gid)
        try:
            flags = "-U postgres --encoding=UTF8 --locale=C --auth-local=trust"
            flags += " --auth-host=scram-sha-256"
            self._run(["initdb", "-D", str(self.data_dir), *flags.split(), f"--pwfile={pwfile}"])
        finally:
            pwfile.unlink(missing_ok=True)
        # Be explicit rather than trusting initdb defaults: socket trusted, TCP needs scram.
        (self.data_dir / "pg_hba.conf").write_text(
            "local all all trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
            "host all all ::1/128 scram-sha-256\n"
        )

    def _bootstrap(self) -> None:
        # psql's :'var' / :"var" do client-side literal/identifier quoting, so passwords with
        # quotes, backslashes, @ / % : survive without us escaping anything by hand.
        sql = 'CREATE ROLE :"usr" LOGIN PASSWORD :\'pw\';\nCREATE DATABASE :"db" OWNER :"usr";\n'
        conn = ["-h", str(self.socket_dir), "-p", str(self.port), "-Upostgres", "-dpostgres"]
        pvars = [f"usr={self.user}", f"pw={self.password}", f"db={self.database}"]
        args = [a for v in ["ON_ERROR_STOP=1", *pvars] for a in ("-v", v)]
        self._run(["psql", "-X", "-q", *conn, *args], input=sql)

    def _run(
        self, cmd: list[str], *, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        # Ambient PG* variables (PGHOST, PGPASSWORD, ...) must not leak into our tools.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        kw: dict[str, Any] = {}
        if self._run_as is not None:
            kw = {"user": self._run_as.pw_uid, "group": self._run_as.pw_gid, "extra_groups": []}
        # cwd: the unprivileged user may not be able to enter the caller's cwd.
        cwd = self.base_dir if self.base_dir.exists() else "/"
        res = subprocess.run(
            [str(self.bin_dir / cmd[0]), *cmd[1:]],
            input=input,
            capture_output=True,
            text=True,
            env=env,
            cwd=cwd,
            timeout=120,
            **kw,
        )
        if check and res.returncode != 0:
            raise RuntimeError(f"{cmd[0]} failed ({res.returncode}): {res.stderr.strip()}")
        return res

    @staticmethod
    def _system_user() -> pwd.struct_passwd:
        try:
            return pwd.getpwnam(_SYSTEM_USER)
        except KeyError:
            cmd = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin"]
            subprocess.run([*cmd, _SYSTEM_USER], check=True, capture_output=True)
            return pwd.getpwnam(_SYSTEM_USER)
