"""Logging: one line per event, control characters escaped, credentials in URLs redacted.

Text or JSON (`AUTHKEEP_LOG_FORMAT`). The redaction is a second line of defence: authkeep's own
messages already show DSNs only in their display form.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

from authkeep.config import LogFormat, Settings

_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]*):[^@\s]*@")
# C0 and C1 controls (incl. ESC and CSI) and the Unicode line/paragraph separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def redact(text: str) -> str:
    """Replace `scheme://user:password@` with `scheme://user:***@`."""
    return _URL_CREDENTIALS.sub(r"\g<scheme>\g<user>:***@", text)


def escape_control(text: str) -> str:
    """Escape CR, LF, ANSI escapes and other control characters so one event stays one line."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


class SafeFormatter(logging.Formatter):
    def __init__(self, fmt: LogFormat) -> None:
        super().__init__()
        self.fmt = fmt

    def format(self, record: logging.LogRecord) -> str:
        message = escape_control(redact(record.getMessage()))
        if record.exc_info and record.levelno >= logging.ERROR:
            exc_type = record.exc_info[0]
            message += f" [{exc_type.__name__ if exc_type else 'error'}]"
        timestamp = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        if self.fmt is LogFormat.JSON:
            return json.dumps(
                {
                    "time": timestamp,
                    "level": record.levelname,
                    "logger": record.name,
                    "message": message,
                }
            )
        return f"{timestamp} {record.levelname:<7} {record.name}: {message}"


class CurrentStderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is at the time of each record, not the stream that was
    current at setup: tools that swap stderr (test runners, embedding apps) keep working."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def setup_logging(settings: Settings) -> None:
    """Route authkeep's and uvicorn's loggers through one safe handler on stderr."""
    handler = CurrentStderrHandler()
    handler.setFormatter(SafeFormatter(settings.log_format))
    root = logging.getLogger()
    for existing in list(root.handlers):
        if getattr(existing, "authkeep", False):
            root.removeHandler(existing)
    handler.authkeep = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
