"""Signed webhook delivery of threshold events, with retries (SPEC §7; docs/plans.md).

The deliverer is a background service: every `poll_seconds` it claims the events that are due
(`next_attempt_at` ≤ now, not delivered, attempts left) and POSTs each to `AUTHKEEP_WEBHOOK_URL`:

    {"id": "<event id>", "type": "<kind>", "created_at": "<ISO 8601>", "data": {...}}

with `Authkeep-Signature: t=<unix seconds>,v1=<hex HMAC-SHA-256 of "<t>.<body>">` under the
webhook secret and `Authkeep-Event-Id: <event id>`. A 2xx answer marks the event delivered; any
other answer or error counts an attempt and schedules the next one with exponential backoff and
jitter, until `AUTHKEEP_WEBHOOK_MAX_ATTEMPTS` (then the event stays undelivered, `last_error` set).

Several nodes may run a deliverer on one database: an event is claimed by moving its
`next_attempt_at` forward by a lease in one conditional UPDATE, so only one node sends it. No
transaction is held open during the HTTP call. Without a webhook URL nothing is sent and events
stay in the table; the key-expiry scan runs either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import random
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import select, update

from authkeep import __version__
from authkeep.config import Settings
from authkeep.core.db import Database
from authkeep.core.models import utcnow
from authkeep.core.secrets import secret_for
from authkeep.plans.models import ThresholdEvent
from authkeep.plans.thresholds import note_expiring_keys

logger = logging.getLogger("authkeep.webhooks")

SIGNATURE_HEADER = "Authkeep-Signature"
EVENT_ID_HEADER = "Authkeep-Event-Id"
MAX_ERROR_LENGTH = 200


def event_body(event_id: uuid.UUID, kind: str, created_at: datetime, data: dict[str, Any]) -> bytes:
    """The exact bytes sent (and signed) for one event."""
    document = {
        "id": str(event_id),
        "type": kind,
        "created_at": created_at.isoformat(),
        "data": data,
    }
    return json.dumps(document, separators=(",", ":"), sort_keys=True).encode()


def signature(secret: str, body: bytes, timestamp: int) -> str:
    """The `Authkeep-Signature` value: `t=<timestamp>,v1=<hex HMAC-SHA-256 of "<t>.<body>">`."""
    signed = f"{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


@dataclass(frozen=True)
class Backoff:
    """The wait after the n-th failed attempt: base·2^(n-1), capped at `max_seconds`, plus up
    to `jitter`·that at random, so retries from many events do not arrive together."""

    base_seconds: float = 30.0
    max_seconds: float = 3600.0
    jitter: float = 0.2

    def delay(self, failures: int) -> float:
        exponent = min(max(failures - 1, 0), 32)
        delay = min(self.max_seconds, self.base_seconds * 2.0**exponent)
        return delay + random.uniform(0, self.jitter * delay)  # noqa: S311 - spreading retries


@dataclass(frozen=True)
class Claimed:
    id: uuid.UUID
    kind: str
    created_at: datetime
    payload: dict[str, Any]
    attempts: int


@dataclass(frozen=True)
class Sender:
    """POSTs signed events to one URL."""

    url: str
    secret: str
    client: httpx.AsyncClient

    async def send(self, event: Claimed) -> str | None:
        """None when the receiver answered 2xx, else a short reason: a status or an exception
        class, never the URL (it may carry a token) or the receiver's answer."""
        body = event_body(event.id, event.kind, event.created_at, event.payload)
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: signature(self.secret, body, int(time.time())),
            EVENT_ID_HEADER: str(event.id),
        }
        try:
            response = await self.client.post(self.url, content=body, headers=headers)
        except Exception as exc:
            return f"request failed: {type(exc).__name__}"
        if 200 <= response.status_code < 300:
            return None
        return f"HTTP {response.status_code}"


class HideRequestsTo(logging.Filter):
    """Drops httpx's own "HTTP Request: POST <url> …" lines for the webhook URL: the URL may
    carry a token (a path segment or a query parameter), and logs never carry secrets."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = httpx.URL(url)

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not any(isinstance(arg, httpx.URL) and arg == self.url for arg in args)


class WebhookDeliverer:
    """The background service registered by `create_app` (core.services.add_service).

    `poll_seconds`, `scan_seconds` and `backoff` are for tests and benchmarks; the app uses
    the defaults.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        poll_seconds: float = 2.0,
        scan_seconds: float = 3600.0,
        backoff: Backoff | None = None,
        batch_size: int = 50,
    ) -> None:
        self.settings = settings
        self.max_attempts = settings.webhook_max_attempts
        self.poll_seconds = poll_seconds
        self.scan_seconds = scan_seconds
        self.backoff = backoff or Backoff()
        self.batch_size = batch_size
        # Long enough for one POST to time out; after it another node may take the event over.
        self.lease = timedelta(seconds=2 * settings.webhook_timeout + 10)
        # Events another node claimed between our read and our claim (several nodes polling).
        self.claims_lost = 0
        self._database: Database | None = None
        self._sender: Sender | None = None
        self._hide: HideRequestsTo | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    async def start(self, database: Database) -> None:
        self._database = database
        if self.settings.webhook_url is not None:
            # Production without AUTHKEEP_WEBHOOK_SECRET fails here, at start-up, naming it.
            secret = secret_for(self.settings, "webhook_secret").get_secret_value()
            client = httpx.AsyncClient(
                timeout=self.settings.webhook_timeout,
                follow_redirects=False,
                headers={"User-Agent": f"authkeep/{__version__}"},
            )
            self._sender = Sender(self.settings.webhook_url, secret, client)
            self._hide = HideRequestsTo(self.settings.webhook_url)
            logging.getLogger("httpx").addFilter(self._hide)
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name="authkeep-webhooks")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._sender is not None:
            await self._sender.client.aclose()
            self._sender = None
        if self._hide is not None:
            logging.getLogger("httpx").removeFilter(self._hide)
            self._hide = None

    async def _run(self) -> None:
        next_scan = 0.0
        failing = False
        while not self._stopping.is_set():
            try:
                if time.monotonic() >= next_scan:
                    next_scan = time.monotonic() + self.scan_seconds
                    await self.scan_expiring_keys()
                while await self.deliver_due() == self.batch_size:
                    pass
                if failing:
                    logger.info("webhook deliverer running again")
                failing = False
            except Exception as exc:
                # Keep going: the database may be back at the next poll. One line per outage,
                # naming the class only (driver messages can quote SQL).
                if not failing:
                    logger.warning("webhook deliverer pass failed: %s", type(exc).__name__)
                failing = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.poll_seconds)

    def _db(self) -> Database:
        if self._database is None:
            raise RuntimeError("the webhook deliverer has not been started")
        return self._database

    async def scan_expiring_keys(self) -> int:
        """One `key.expiring` scan; returns how many events it added."""
        async with self._db().session_scope() as db:
            return await note_expiring_keys(db, self.settings.key_expiry_warning_days)

    async def deliver_due(self) -> int:
        """One pass: claim and send the events due now; returns how many this node claimed."""
        if self._sender is None:
            return 0
        claimed = 0
        for event_id, seen in await self.due():
            event = await self.claim(event_id, seen)
            if event is None:
                self.claims_lost += 1
            else:
                claimed += 1
                await self._record(event, await self._sender.send(event))
        return claimed

    async def due(self) -> list[tuple[uuid.UUID, datetime]]:
        """Events to send now: (id, the `next_attempt_at` seen, which `claim` compares)."""
        async with self._db().session_scope() as db:
            rows = await db.execute(
                select(ThresholdEvent.id, ThresholdEvent.next_attempt_at)
                .where(
                    ThresholdEvent.delivered_at.is_(None),
                    ThresholdEvent.attempts < self.max_attempts,
                    ThresholdEvent.next_attempt_at <= utcnow(),
                )
                .order_by(ThresholdEvent.next_attempt_at)
                .limit(self.batch_size)
            )
            return [(row[0], row[1]) for row in rows.all()]

    async def claim(self, event_id: uuid.UUID, seen: datetime) -> Claimed | None:
        """Take the event for one lease, unless another node took it since we read it."""
        async with self._db().session_scope() as db:
            row = (
                await db.execute(
                    update(ThresholdEvent)
                    .where(
                        ThresholdEvent.id == event_id,
                        ThresholdEvent.next_attempt_at == seen,
                        ThresholdEvent.delivered_at.is_(None),
                    )
                    .values(next_attempt_at=utcnow() + self.lease)
                    .returning(
                        ThresholdEvent.kind,
                        ThresholdEvent.created_at,
                        ThresholdEvent.payload,
                        ThresholdEvent.attempts,
                    )
                )
            ).first()
        if row is None:
            return None
        return Claimed(event_id, row[0], row[1], dict(row[2] or {}), int(row[3]))

    async def _record(self, event: Claimed, error: str | None) -> None:
        """Mark the event delivered, or count the failed attempt and schedule the next one."""
        now = utcnow()
        attempts = event.attempts + 1
        async with self._db().session_scope() as db:
            query = update(ThresholdEvent).where(
                ThresholdEvent.id == event.id, ThresholdEvent.delivered_at.is_(None)
            )
            if error is None:
                await db.execute(query.values(delivered_at=now, attempts=attempts, last_error=None))
                return
            retry_at = now + timedelta(seconds=self.backoff.delay(attempts))
            await db.execute(
                query.values(
                    attempts=attempts, last_error=error[:MAX_ERROR_LENGTH], next_attempt_at=retry_at
                )
            )
        if attempts >= self.max_attempts:
            logger.warning(
                "webhook event %s (%s) given up after %d attempts: %s",
                event.id,
                event.kind,
                attempts,
                error,
            )
