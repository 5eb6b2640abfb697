"""Threshold events delivered as signed webhooks to a real HTTP receiver on loopback (SPEC §7):
the signature verifies with the snippet docs/plans.md gives receivers and forgeries fail it,
failed attempts are retried with backoff, given up after the configured attempts, and an event
is delivered once even with several nodes polling one database."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from plan_helpers import eventually, stored_user, threshold_events
from receiver import Receiver, running_receiver
from sqlalchemy import select
from sqlalchemy.engine import make_url

from authkeep.config import Settings
from authkeep.core.db import Database
from authkeep.core.dsn import Candidate
from authkeep.core.models import utcnow
from authkeep.core.secrets import secret_for
from authkeep.core.services import services_of
from authkeep.errors import ConfigError
from authkeep.keys.models import ApiKey
from authkeep.plans.entitlements import period_start
from authkeep.plans.models import ThresholdEvent
from authkeep.plans.thresholds import note_quota, record_event
from authkeep.plans.webhooks import Backoff, WebhookDeliverer
from support.secrets_scan import FIGURES, SCAN
from users.identity_helpers import database, started_app

DOCS = Path(__file__).resolve().parents[2] / "docs" / "plans.md"
FAST = Backoff(base_seconds=0.05, max_seconds=0.2, jitter=0.5)
Verifier = Callable[..., bool]


def documented_verifier() -> Verifier:
    """The receiver snippet from docs/plans.md, run as written."""
    section = DOCS.read_text().split("### Verifying the signature", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None, "docs/plans.md lost its verification snippet"
    namespace: dict[str, Any] = {}
    exec(match.group(1), namespace)  # noqa: S102 - our own documentation
    verifier: Verifier = namespace["verify_authkeep_signature"]
    return verifier


def webhook_settings(
    make_settings: Callable[..., Settings], url: str, receiver: Receiver, **overrides: Any
) -> tuple[Settings, str]:
    secret = SCAN.register(secrets.token_urlsafe(32))
    settings = make_settings(
        database_url=url, webhook_url=receiver.url, webhook_secret=secret, **overrides
    )
    return settings, secret


@asynccontextmanager
async def delivering(
    settings: Settings, database: Database, **options: Any
) -> AsyncIterator[WebhookDeliverer]:
    options.setdefault("poll_seconds", 0.02)
    options.setdefault("backoff", FAST)
    deliverer = WebhookDeliverer(settings, **options)
    await deliverer.start(database)
    try:
        yield deliverer
    finally:
        await deliverer.stop()


async def quota_event(app: FastAPI) -> ThresholdEvent:
    user_id = await stored_user(app)
    async with database(app).session_scope() as db:
        assert await note_quota(db, user_id, "api", 70, 85, 100, period_start(utcnow()))
    (event,) = await threshold_events(app, f"user:{user_id}:api")
    return event


async def event_row(app: FastAPI, event_id: uuid.UUID) -> ThresholdEvent:
    async with database(app).session_scope() as db:
        event = await db.get(ThresholdEvent, event_id)
        assert event is not None
        return event


def delivered(app: FastAPI, event_id: uuid.UUID) -> Callable[[], Any]:
    async def check() -> bool:
        return (await event_row(app, event_id)).delivered_at is not None

    return check


async def test_delivery_is_signed_and_verifies_with_the_documented_snippet(
    app: FastAPI, migrated_url: str, make_settings: Callable[..., Settings]
) -> None:
    verify = documented_verifier()
    with running_receiver() as receiver:
        settings, secret = webhook_settings(make_settings, migrated_url, receiver)
        event = await quota_event(app)
        async with delivering(settings, database(app)):
            await eventually(delivered(app, event.id))
    (request,) = receiver.requests
    assert request.path == "/hooks/authkeep"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["authkeep-event-id"] == str(event.id)
    document = json.loads(request.body)
    assert document == {
        "id": str(event.id),
        "type": "quota.80",
        "created_at": event.created_at.isoformat(),
        "data": event.payload,
    }
    header = request.headers["authkeep-signature"]
    assert verify(secret, request.body, header)

    # Forgeries a receiver must refuse.
    tampered = request.body.replace(b'"used":85', b'"used":1')
    assert tampered != request.body
    assert not verify(secret, tampered, header)
    assert not verify(secrets.token_urlsafe(32), request.body, header)
    timestamp = int(re.search(r"t=(\d+)", header).group(1))  # type: ignore[union-attr]
    stale = timestamp - 3600
    signed = f"{stale}.".encode() + request.body
    replayed = f"t={stale},v1={hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()}"
    assert not verify(secret, request.body, replayed)
    moved = header.replace(f"t={timestamp}", f"t={timestamp + 1}")
    assert not verify(secret, request.body, moved)
    assert not verify(secret, request.body, "")
    assert not verify(secret, request.body, f"t={int(time.time())},v1=")

    row = await event_row(app, event.id)
    assert (row.attempts, row.last_error) == (1, None)


async def test_a_receiver_failing_twice_gets_the_event_on_the_third_attempt(
    app: FastAPI, migrated_url: str, make_settings: Callable[..., Settings]
) -> None:
    verify = documented_verifier()
    with running_receiver(fail_first=2) as receiver:
        settings, secret = webhook_settings(make_settings, migrated_url, receiver)
        event = await quota_event(app)
        async with delivering(settings, database(app)):
            await eventually(delivered(app, event.id))
    assert [r.status for r in receiver.requests] == [500, 500, 204]
    assert {r.headers["authkeep-event-id"] for r in receiver.requests} == {str(event.id)}
    assert len({r.body for r in receiver.requests}) == 1
    assert all(verify(secret, r.body, r.headers["authkeep-signature"]) for r in receiver.requests)
    row = await event_row(app, event.id)
    assert (row.attempts, row.last_error) == (3, None)


async def test_gives_up_after_max_attempts_with_one_log_line_and_no_secret(
    app: FastAPI,
    migrated_url: str,
    make_settings: Callable[..., Settings],
    caplog: pytest.LogCaptureFixture,
) -> None:
    with running_receiver(always_fail=True) as receiver:
        settings, secret = webhook_settings(
            make_settings, migrated_url, receiver, webhook_max_attempts=3
        )
        event = await quota_event(app)
        with caplog.at_level(logging.INFO, logger="authkeep.webhooks"):
            async with delivering(settings, database(app)) as deliverer:

                async def given_up() -> bool:
                    return (await event_row(app, event.id)).attempts >= 3

                await eventually(given_up)
                assert await deliverer.due() == []
                assert await deliverer.deliver_due() == 0
    assert receiver.count() == 3
    row = await event_row(app, event.id)
    assert (row.attempts, row.delivered_at, row.last_error) == (3, None, "HTTP 500")
    lines = [r.getMessage() for r in caplog.records if r.name == "authkeep.webhooks"]
    assert lines == [f"webhook event {event.id} (quota.80) given up after 3 attempts: HTTP 500"]
    assert secret not in caplog.text
    assert receiver.url not in caplog.text


async def test_an_unreachable_receiver_counts_attempts_without_leaking_the_url(
    app: FastAPI, migrated_url: str, make_settings: Callable[..., Settings], closed_port: int
) -> None:
    url = f"http://127.0.0.1:{closed_port}/hook?token=hook-token-{secrets.token_hex(8)}"
    SCAN.register(url.split("token=")[1])
    settings = make_settings(
        database_url=migrated_url,
        webhook_url=url,
        webhook_secret=SCAN.register(secrets.token_urlsafe(32)),
        webhook_max_attempts=2,
    )
    event = await quota_event(app)
    async with delivering(settings, database(app)):

        async def given_up() -> bool:
            return (await event_row(app, event.id)).attempts >= 2

        await eventually(given_up)
    row = await event_row(app, event.id)
    assert (row.delivered_at, row.last_error) == (None, "request failed: ConnectError")


async def test_concurrent_claims_of_one_event_succeed_once(
    app: FastAPI, migrated_url: str, make_settings: Callable[..., Settings]
) -> None:
    """The claim is one conditional UPDATE: of 20 nodes that saw the event due, one gets it."""
    with running_receiver() as receiver:
        settings, _ = webhook_settings(make_settings, migrated_url, receiver)
        event = await quota_event(app)
        deliverer = WebhookDeliverer(settings, poll_seconds=3600)
        await deliverer.start(database(app))
        try:
            ((event_id, seen),) = await deliverer.due()
            claims = await asyncio.gather(*(deliverer.claim(event_id, seen) for _ in range(20)))
        finally:
            await deliverer.stop()
    assert event_id == event.id
    assert sum(claim is not None for claim in claims) == 1


async def test_three_nodes_deliver_each_event_exactly_once(
    app: FastAPI, migrated_url: str, make_settings: Callable[..., Settings]
) -> None:
    engine = "postgresql" if migrated_url.startswith("postgresql") else "sqlite"
    user_id = await stored_user(app)
    count = 30
    async with database(app).session_scope() as db:
        for n in range(count):
            await record_event(db, f"user:{user_id}:f{n}", "quota.80", "2031-06", {"n": n})
    with running_receiver() as receiver:
        settings, _ = webhook_settings(make_settings, migrated_url, receiver)
        nodes = [Database.open(database(app).candidate, settings) for _ in range(3)]
        try:
            async with (
                delivering(settings, nodes[0], batch_size=4) as first,
                delivering(settings, nodes[1], batch_size=4) as second,
                delivering(settings, nodes[2], batch_size=4) as third,
            ):

                async def all_delivered() -> bool:
                    async with database(app).session_scope() as db:
                        rows = await db.scalars(
                            select(ThresholdEvent.id).where(ThresholdEvent.delivered_at.is_(None))
                        )
                        return not rows.all()

                await eventually(all_delivered)
                lost = sum(d.claims_lost for d in (first, second, third))
        finally:
            for node in nodes:
                await node.dispose()
    received = Counter(r.headers["authkeep-event-id"] for r in receiver.requests)
    assert len(received) == count
    duplicates = sum(n - 1 for n in received.values())
    assert duplicates == 0
    FIGURES.append(
        f"webhooks {engine}: {count} events, 3 nodes polling, {lost} claims lost to another "
        f"node, {duplicates} duplicate deliveries"
    )


async def test_without_a_webhook_url_events_stay_in_the_table(app: FastAPI) -> None:
    deliverer = app.state.webhooks
    assert deliverer in services_of(app)
    event = await quota_event(app)
    assert await deliverer.deliver_due() == 0
    row = await event_row(app, event.id)
    assert (row.attempts, row.delivered_at) == (0, None)


async def test_expiring_keys_are_found_by_the_deliverer_and_delivered(
    app: FastAPI, migrated_url: str, make_settings: Callable[..., Settings]
) -> None:
    user_id = await stored_user(app)
    key = ApiKey(
        user_id=user_id,
        name="deploy bot",
        prefix="ak",
        start="ak_test",
        key_hash=secrets.token_hex(32),
        expires_at=utcnow() + timedelta(days=2),
    )
    async with database(app).session_scope() as db:
        db.add(key)
    with running_receiver() as receiver:
        settings, _ = webhook_settings(make_settings, migrated_url, receiver)
        async with delivering(settings, database(app)):

            async def received() -> bool:
                return bool(receiver.accepted())

            await eventually(received)
    (request,) = receiver.requests
    document = json.loads(request.body)
    assert document["type"] == "key.expiring"
    assert document["data"]["key_id"] == str(key.id)
    assert document["data"]["owner"] == str(user_id)


async def test_the_app_delivers_with_its_own_deliverer_and_generated_secret(
    make_settings: Callable[..., Settings], migrated_url: str
) -> None:
    """Standalone development: AUTHKEEP_WEBHOOK_URL alone is enough; the secret is generated
    once and kept in the data dir."""
    verify = documented_verifier()
    with running_receiver() as receiver:
        async with started_app(make_settings, migrated_url, webhook_url=receiver.url) as app:
            secret = SCAN.register(
                secret_for(app.state.settings, "webhook_secret").get_secret_value()
            )
            event = await quota_event(app)
            await eventually(delivered(app, event.id))
    (request,) = receiver.requests
    assert verify(secret, request.body, request.headers["authkeep-signature"])


async def test_production_needs_the_webhook_secret_once_a_url_is_set(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """Engine-independent: the deliverer refuses to start before it touches the database."""
    settings = make_settings(
        env="production",
        secret_key=secrets.token_urlsafe(48),
        webhook_url="https://hooks.example.com/authkeep",
    )
    url = make_url(f"sqlite+aiosqlite:///{tmp_path / 'unused.db'}")
    unused = Database.open(Candidate("test", url), settings)
    try:
        with pytest.raises(ConfigError, match="AUTHKEEP_WEBHOOK_SECRET"):
            await WebhookDeliverer(settings).start(unused)
    finally:
        await unused.dispose()
    assert not (settings.data_dir / "secrets.json").exists()
