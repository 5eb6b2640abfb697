"""Prometheus metrics of the defences (CHK-BF-04): one registry per app, never the library's
global one, so every app (and every test) counts on its own.

- `authkeep_rate_limited_total{limiter}`: requests refused by each limiter, counted where the
  refusal becomes the answer (`LIMITERS` lists the labels).
- `authkeep_sign_in_total{outcome}`: password sign-ins by verdict: `success` (the password
  was right, whatever came next), `failure` (`invalid_credentials`) or `throttled` (429
  before any check).
- `authkeep_sign_in_failure_ratio` and `authkeep_sign_in_failure_alarm`: failures ÷ judged
  sign-ins over the last `ALARM_WINDOW_SECONDS`. The alarm turns on (gauge 1, one warning
  `failed_sign_in_ratio_high`) once the window holds at least `ALARM_MIN_ATTEMPTS` judged
  sign-ins of which at least `ALARM_RATIO` failed, and off again (one info line) when the
  ratio falls below `ALARM_CLEAR_RATIO` or the window holds fewer than half the minimum: the
  gap keeps a ratio that hovers at the threshold from logging on every sign-in.

Label values are fixed names, never emails, addresses or keys. `GET /metrics` serves the
registry only when `AUTHKEEP_METRICS_ENABLED` is true (`router`); counting always happens.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable

from fastapi import APIRouter, Request, Response
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.exposition import choose_encoder
from starlette.applications import Starlette
from starlette.exceptions import HTTPException

logger = logging.getLogger("authkeep.metrics")

LIMITERS = (
    "password_ip",  # wrong passwords per client network (sign-in, change password, …)
    "account_delay",  # the progressive wait per sign-in identifier
    "sign_up_ip",
    "mail_ip",  # reset / verification mails per client network
    "mail_address",  # … per address
    "mfa",  # wrong codes per account
    "mfa_challenge",  # wrong codes per sign-in challenge
    "api_ip",
    "api_owner",
    "api_key",
    "verify_ratelimit",  # a key's own named limits on POST /api/keys/verify (RATE_LIMITED)
)
SIGN_IN_OUTCOMES = ("success", "failure", "throttled")
ALARM_WINDOW_SECONDS = 300
ALARM_MIN_ATTEMPTS = 100
ALARM_RATIO = 0.5
ALARM_CLEAR_RATIO = 0.4
ALARM_CODE = "failed_sign_in_ratio_high"
# Headers a reverse proxy adds: a request carrying one came through a proxy, i.e. possibly
# from the internet, and is answered as if /metrics did not exist.
PROXY_HEADERS = ("x-forwarded-for", "forwarded", "fly-client-ip")


class FailureRatio:
    """Judged sign-ins and failures per second over a sliding window: at most `window`
    buckets, whatever the traffic."""

    def __init__(self, window: int, clock: Callable[[], float]) -> None:
        self.window = window
        self.clock = clock
        self.attempts = 0
        self.failures = 0
        self._buckets: deque[list[int]] = deque()  # [second, attempts, failures]

    def _expire(self, second: int) -> None:
        while self._buckets and self._buckets[0][0] <= second - self.window:
            _, attempts, failures = self._buckets.popleft()
            self.attempts -= attempts
            self.failures -= failures

    def add(self, failed: bool) -> None:
        second = int(self.clock())
        self._expire(second)
        if not self._buckets or self._buckets[-1][0] != second:
            self._buckets.append([second, 0, 0])
        bucket = self._buckets[-1]
        bucket[1] += 1
        bucket[2] += int(failed)
        self.attempts += 1
        self.failures += int(failed)

    def current(self) -> tuple[int, int]:
        """(attempts, failures) in the window now."""
        self._expire(int(self.clock()))
        return self.attempts, self.failures


class Metrics:
    """The counters of one app (see module doc)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = CollectorRegistry()
        self.rate_limited = Counter(
            "authkeep_rate_limited",
            "Requests refused by a rate limiter, by limiter.",
            ["limiter"],
            registry=self.registry,
        )
        self.sign_ins = Counter(
            "authkeep_sign_in",
            "Password sign-ins by outcome: success, failure or throttled.",
            ["outcome"],
            registry=self.registry,
        )
        self.failure_ratio = Gauge(
            "authkeep_sign_in_failure_ratio",
            f"Failed / judged password sign-ins over the last {ALARM_WINDOW_SECONDS} s.",
            registry=self.registry,
        )
        self.failure_alarm = Gauge(
            "authkeep_sign_in_failure_alarm",
            "1 while the failed sign-in ratio is high (credential stuffing?), else 0.",
            registry=self.registry,
        )
        for limiter in LIMITERS:
            self.rate_limited.labels(limiter)
        for outcome in SIGN_IN_OUTCOMES:
            self.sign_ins.labels(outcome)
        self.window = FailureRatio(ALARM_WINDOW_SECONDS, clock)
        self.alarm_on = False

    def refused(self, limiter: str) -> None:
        """One request refused by `limiter` (a name from `LIMITERS`)."""
        self.rate_limited.labels(limiter).inc()

    def sign_in(self, outcome: str) -> None:
        """One password sign-in's verdict (a name from `SIGN_IN_OUTCOMES`)."""
        self.sign_ins.labels(outcome).inc()
        if outcome != "throttled":
            self.window.add(outcome == "failure")
            self.update_alarm()

    def update_alarm(self) -> None:
        attempts, failures = self.window.current()
        ratio = failures / attempts if attempts else 0.0
        self.failure_ratio.set(ratio)
        if not self.alarm_on and attempts >= ALARM_MIN_ATTEMPTS and ratio >= ALARM_RATIO:
            self.alarm_on = True
            self.failure_alarm.set(1)
            logger.warning(
                "%s: %d of %d password sign-ins failed in the last %d s (ratio %.2f, alarm at "
                "%.2f with at least %d): credential stuffing?",
                ALARM_CODE,
                failures,
                attempts,
                ALARM_WINDOW_SECONDS,
                ratio,
                ALARM_RATIO,
                ALARM_MIN_ATTEMPTS,
            )
        elif self.alarm_on and (ratio < ALARM_CLEAR_RATIO or attempts < ALARM_MIN_ATTEMPTS // 2):
            self.alarm_on = False
            self.failure_alarm.set(0)
            logger.info(
                "%s cleared: %d of %d password sign-ins failed in the last %d s (ratio %.2f)",
                ALARM_CODE,
                failures,
                attempts,
                ALARM_WINDOW_SECONDS,
                ratio,
            )


def metrics_for(app: Starlette) -> Metrics:
    """The app's metrics: `app.state.metrics`, else a set created on first use."""
    metrics: Metrics | None = getattr(app.state, "metrics", None)
    if metrics is None:
        metrics = Metrics()
        app.state.metrics = metrics
    return metrics


router = APIRouter(include_in_schema=False)


@router.get("/metrics")
async def read_metrics(request: Request) -> Response:
    """The registry in Prometheus text format (OpenMetrics when the scraper asks for it).
    Only included when `AUTHKEEP_METRICS_ENABLED` is true; a request forwarded by a proxy gets
    the same 404 as an unknown path, so a proxy that passes every path on still hides it."""
    if any(name in request.headers for name in PROXY_HEADERS):
        raise HTTPException(404)
    metrics = metrics_for(request.app)
    metrics.update_alarm()  # the window may have emptied since the last sign-in
    encode, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encode(metrics.registry), headers={"Content-Type": content_type})
