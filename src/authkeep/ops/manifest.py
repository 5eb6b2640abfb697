"""`<backup_dir>/manifest.json`: what each backup holds, and whether a drill has verified it.

Every change is a read-modify-write under an exclusive `flock` on a lock file beside the
manifest, and the new manifest is written to a temporary file, fsynced and renamed over the old
one, so a crash or a second backup running at the same time never leaves a torn or lost entry.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from authkeep.errors import AuthkeepError
from authkeep.ops.snapshot import Snapshot, TableDigest

MANIFEST_NAME = "manifest.json"
_LOCK_NAME = ".manifest.lock"
FORMAT_VERSION = 1
STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
BACKUP_NAME = re.compile(
    r"^authkeep-(?P<engine>sqlite|postgresql)-(?P<stamp>\d{8}T\d{6}Z)-(?P<head>[A-Za-z0-9_]+)"
    r"\.(?P<ext>dump|sqlite\.gz)$"
)


class BackupError(AuthkeepError):
    code = "backup_failed"
    detail = "The backup failed."


@dataclass(frozen=True)
class BackupRecord:
    """One manifest entry: a backup file and the snapshot of the source it was taken from."""

    file: str
    engine: str
    created_at: datetime
    head: str | None
    size_bytes: int
    sha256: str
    source: str
    tables: dict[str, TableDigest]
    verified_at: datetime | None = None

    @property
    def snapshot(self) -> Snapshot:
        return Snapshot(head=self.head, tables=dict(self.tables))

    def age_seconds(self, now: datetime | None = None) -> int:
        """How old the data in this backup is (from `created_at`), in whole seconds."""
        return max(0, int(((now or datetime.now(UTC)) - self.created_at).total_seconds()))

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "engine": self.engine,
            "created_at": self.created_at.isoformat(),
            "head": self.head,
            "size_bytes": self.size_bytes,
            "sha256": self.sha256,
            "source": self.source,
            "tables": {name: digest.as_dict() for name, digest in self.tables.items()},
            "verified_at": self.verified_at.isoformat() if self.verified_at else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BackupRecord:
        verified = data.get("verified_at")
        return cls(
            file=str(data["file"]),
            engine=str(data["engine"]),
            created_at=datetime.fromisoformat(str(data["created_at"])),
            head=str(data["head"]) if data.get("head") is not None else None,
            size_bytes=int(data.get("size_bytes", 0)),
            sha256=str(data.get("sha256", "")),
            source=str(data.get("source", "")),
            tables=Snapshot.from_dict({"tables": data.get("tables") or {}}).tables,
            verified_at=datetime.fromisoformat(str(verified)) if verified else None,
        )


def backup_name(engine: str, created_at: datetime, head: str) -> str:
    """`authkeep-<engine>-<UTC yyyymmddTHHMMSSZ>-<head>.{dump|sqlite.gz}`."""
    safe_head = re.sub(r"[^A-Za-z0-9_]", "_", head)
    ext = "dump" if engine == "postgresql" else "sqlite.gz"
    return (
        f"authkeep-{engine}-{created_at.astimezone(UTC).strftime(STAMP_FORMAT)}-{safe_head}.{ext}"
    )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load(directory: Path) -> list[BackupRecord]:
    """The manifest's entries, oldest first; an absent manifest is an empty list."""
    path = directory / MANIFEST_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise BackupError(f"{path} cannot be read ({type(exc).__name__}).") from None
    try:
        records = [BackupRecord.from_dict(item) for item in data.get("backups", [])]
    except (KeyError, TypeError, ValueError) as exc:
        raise BackupError(f"{path} has an entry authkeep cannot read ({exc!s}).") from None
    return sorted(records, key=lambda record: record.created_at)


def find(directory: Path, file_name: str) -> BackupRecord | None:
    return next((r for r in load(directory) if r.file == file_name), None)


def _write(directory: Path, records: list[BackupRecord]) -> None:
    document = {"version": FORMAT_VERSION, "backups": [r.as_dict() for r in records]}
    fd, temporary = tempfile.mkstemp(prefix=".manifest-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(document, handle, indent=2)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, directory / MANIFEST_NAME)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    fsync_directory(directory)


def fsync_directory(directory: Path) -> None:
    """Make a rename in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    with (directory / _LOCK_NAME).open("a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def update(
    directory: Path, change: Callable[[list[BackupRecord]], list[BackupRecord]]
) -> list[BackupRecord]:
    """Apply `change` to the entries under the lock and write the result atomically."""
    with _locked(directory):
        records = change(load(directory))
        _write(directory, sorted(records, key=lambda record: record.created_at))
        return records


def add(directory: Path, record: BackupRecord) -> None:
    update(directory, lambda records: [*[r for r in records if r.file != record.file], record])


def mark_verified(directory: Path, file_name: str, when: datetime) -> None:
    update(
        directory,
        lambda records: [
            replace(r, verified_at=when) if r.file == file_name else r for r in records
        ],
    )


def apply_retention(directory: Path, keep: int) -> list[str]:
    """Keep the newest `keep` backups (plus the newest verified one if none of those is verified);
    delete the others and their entries. Returns the deleted file names."""
    removed: list[str] = []

    def prune(records: list[BackupRecord]) -> list[BackupRecord]:
        present = [r for r in records if (directory / r.file).is_file()]
        newest_first = sorted(present, key=lambda r: r.created_at, reverse=True)
        kept = newest_first[:keep]
        if not any(r.verified_at for r in kept):
            verified = next((r for r in newest_first if r.verified_at), None)
            if verified is not None:
                kept.append(verified)
        for record in newest_first:
            if record not in kept:
                (directory / record.file).unlink(missing_ok=True)
                removed.append(record.file)
        return kept

    update(directory, prune)
    return removed
