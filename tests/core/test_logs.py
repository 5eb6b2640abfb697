"""Logging: credentials in URLs redacted, control characters escaped, one event per line."""

from __future__ import annotations

import json
import logging
import sys

from authkeep.config import LogFormat
from authkeep.core.logs import SafeFormatter, escape_control, redact


def record(message: str, *args: object, level: int = logging.INFO) -> logging.LogRecord:
    return logging.LogRecord("authkeep.test", level, __file__, 1, message, args, None)


def test_redact_masks_percent_encoded_postgres_password() -> None:
    text = "cannot reach postgresql://u:p%40ss@h/db (timeout)"
    assert redact(text) == "cannot reach postgresql://u:***@h/db (timeout)"


def test_redact_masks_redis_password_without_user() -> None:
    assert redact("pubsub on redis://:secret@h:6379 lost") == "pubsub on redis://:***@h:6379 lost"


def test_redact_leaves_urls_without_password_alone() -> None:
    text = "using postgresql://h:5432/db and https://example.com/a:b"
    assert redact(text) == text


def test_escape_control_makes_cr_lf_esc_visible() -> None:
    assert escape_control("a\r\nb\x1b[31mc") == "a\\x0d\\x0ab\\x1b[31mc"


def test_forged_log_line_stays_in_one_text_record() -> None:
    message = "sign-in failed for %s"
    forged = "eve\r\n2024-01-01T00:00:00.000+00:00 INFO    authkeep: admin signed in\x1b[2K"
    output = SafeFormatter(LogFormat.TEXT).format(record(message, forged))
    assert len(output.splitlines()) == 1
    assert "\x1b" not in output
    assert output.endswith(
        "authkeep.test: sign-in failed for eve\\x0d\\x0a2024-01-01T00:00:00"
        ".000+00:00 INFO    authkeep: admin signed in\\x1b[2K"
    )


def test_unicode_line_breaks_and_c1_controls_stay_in_one_record() -> None:
    # NEL (U+0085) and the Unicode line/paragraph separators break lines for str.splitlines()
    # and many viewers; U+009B is the 8-bit CSI that starts an ANSI sequence.
    forged = "eve\x85FAKE one\u2028FAKE two\u2029FAKE three\x9b2K"
    output = SafeFormatter(LogFormat.TEXT).format(record("sign-in failed for %s", forged))
    assert len(output.splitlines()) == 1
    assert "\x9b" not in output


def test_json_format_is_valid_json_with_redacted_message() -> None:
    output = SafeFormatter(LogFormat.JSON).format(
        record("probe of %s failed\nretrying", "postgresql://u:p%40ss@h/db", level=logging.WARNING)
    )
    assert len(output.splitlines()) == 1
    event = json.loads(output)
    assert event["message"] == "probe of postgresql://u:***@h/db failed\\x0aretrying"
    assert (event["level"], event["logger"]) == ("WARNING", "authkeep.test")
    assert "p%40ss" not in output


def test_error_with_exception_logs_its_class_not_its_text() -> None:
    try:
        raise ValueError("password authentication failed for 'hunter2-pw'")
    except ValueError:
        failing = logging.LogRecord(
            "authkeep.test", logging.ERROR, __file__, 1, "bootstrap failed", (), sys.exc_info()
        )
    output = SafeFormatter(LogFormat.TEXT).format(failing)
    assert output.endswith("bootstrap failed [ValueError]")
    assert "hunter2-pw" not in output
    assert "Traceback" not in output
