"""`authkeep deploy check URL`: the post-deploy checks, each with its reason when it fails.

- `/health` answers 200 with `{"status": "ok"}` (the process is up);
- `/health/db` answers 200 (the database answers a real query);
- `/api/version` answers 200 with the running version (and, with `expect_version`, the version
  that was just installed: proof that the restart really happened).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from authkeep.errors import AuthkeepError


class InvalidCheckUrl(AuthkeepError):
    code = "invalid_url"
    status_code = 422
    detail = "The URL must look like http://127.0.0.1:8080 or https://auth.example.com."


@dataclass
class CheckResult:
    name: str
    path: str
    ok: bool
    status: int | None
    detail: str
    elapsed_ms: float


@dataclass
class CheckReport:
    url: str
    results: list[CheckResult] = field(default_factory=list)
    version: str | None = None

    @property
    def ok(self) -> bool:
        return bool(self.results) and all(result.ok for result in self.results)

    @property
    def failures(self) -> list[CheckResult]:
        return [result for result in self.results if not result.ok]

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "url": self.url,
            "version": self.version,
            "checks": [asdict(result) for result in self.results],
        }


def base_url(url: str) -> str:
    """The URL without a trailing slash; only http(s) URLs with a host are accepted."""
    parts = urlsplit(url.strip())
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise InvalidCheckUrl()
    return url.strip().rstrip("/")


def _get(client: httpx.Client, name: str, path: str) -> tuple[CheckResult, Any]:
    started = time.monotonic()

    def result(ok: bool, status: int | None, detail: str) -> CheckResult:
        return CheckResult(name, path, ok, status, detail, (time.monotonic() - started) * 1000)

    try:
        response = client.get(path)
    except httpx.TimeoutException:
        return result(False, None, f"{path}: no answer within the timeout"), None
    except httpx.ConnectError:
        return result(False, None, f"{path}: connection refused or host unreachable"), None
    except httpx.HTTPError as exc:
        return result(False, None, f"{path}: {type(exc).__name__}"), None
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code != 200:
        code = body.get("error") if isinstance(body, dict) else None
        reason = f"{response.status_code} {code}" if code else str(response.status_code)
        return result(False, response.status_code, f"{path}: {reason}"), body
    return result(True, 200, f"{path}: 200"), body


def _check_status(client: httpx.Client, name: str, path: str) -> CheckResult:
    checked, body = _get(client, name, path)
    if checked.ok and not (isinstance(body, dict) and body.get("status") == "ok"):
        checked.ok = False
        checked.detail = f'{path}: 200 but the body is not {{"status": "ok"}}'
    return checked


def _check_version(client: httpx.Client, expect: str | None, report: CheckReport) -> CheckResult:
    path = "/api/version"
    checked, body = _get(client, "version", path)
    if not checked.ok:
        return checked
    version = body.get("version") if isinstance(body, dict) else None
    if not isinstance(version, str):
        checked.ok, checked.detail = False, f"{path}: 200 but no version in the body"
        return checked
    report.version = version
    if expect is not None and version != expect:
        checked.ok = False
        checked.detail = f"{path}: running {version}, expected {expect} (not restarted?)"
    else:
        checked.detail = f"{path}: {version}"
    return checked


def run_checks(url: str, *, timeout: float = 5.0, expect_version: str | None = None) -> CheckReport:
    """Run every check once against `url` and report each, failed or not."""
    report = CheckReport(base_url(url))
    with httpx.Client(base_url=report.url, timeout=timeout, follow_redirects=True) as client:
        report.results.append(_check_status(client, "health", "/health"))
        report.results.append(_check_status(client, "health_db", "/health/db"))
        report.results.append(_check_version(client, expect_version, report))
    return report


def wait_for_checks(
    url: str, *, timeout: float = 5.0, wait: float = 0.0, expect_version: str | None = None
) -> CheckReport:
    """Repeat `run_checks` every second until all pass or `wait` seconds have gone by."""
    deadline = time.monotonic() + wait
    while True:
        report = run_checks(url, timeout=timeout, expect_version=expect_version)
        if report.ok or time.monotonic() >= deadline:
            return report
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
