"""Suite-wide secret scan (RELIABILITY CHK-PS-05, issue "Foundation": 0 password hits).

Every password the tests use is registered here; every log record emitted during the run and
every CLI output or HTTP error body the tests collect is scanned for them at the end.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from urllib.parse import quote


@dataclass
class SecretScan:
    secrets: set[str] = field(default_factory=set)
    texts: list[tuple[str, str]] = field(default_factory=list)

    def register(self, secret: str) -> str:
        self.secrets.add(secret)
        self.secrets.add(quote(secret, safe=""))
        return secret

    def record(self, where: str, text: str) -> str:
        self.texts.append((where, text))
        return text

    def hits(self) -> list[tuple[str, str]]:
        return [
            (where, secret)
            for where, text in self.texts
            for secret in self.secrets
            if secret in text
        ]


class ScanHandler(logging.Handler):
    """Records the raw message (before any redaction) of every log record."""

    def __init__(self, scan: SecretScan) -> None:
        super().__init__(level=logging.DEBUG)
        self.scan = scan

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += f" {record.exc_info[1]!r}"
        self.scan.record(f"log:{record.name}", text)


SCAN = SecretScan()
# Figures tests measure (recovery times, counts): printed in the terminal summary.
FIGURES: list[str] = []
