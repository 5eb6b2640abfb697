"""Verifying an API key: the hot path of SPEC §7 (docs/api-keys.md, "Verifying keys").

cache (by the key's HMAC) → on a miss, parse and one read of the database → checks in the
documented order → charge → count → answer.

- A malformed key (bad shape or checksum) is NOT_FOUND before any lookup: no database work.
- A cache hit for a key without credits, with no metered feature to charge, touches no database.
- Credits and plan quotas are checked and taken in the database, in one unit of work, each by
  one conditional statement, so racing calls never overshoot (CHK-AC-08, FI-RACE-02).
- A loader that read the database before an invalidation does not cache what it read, so a
  change is never undone by a verification that was in flight (FI-RACE-05).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy.ext.asyncio import AsyncSession
from starlette.applications import Starlette

from authkeep.core.metrics import metrics_for
from authkeep.core.models import utcnow
from authkeep.core.ratelimit import limiter_for
from authkeep.errors import ValidationFailed
from authkeep.keys.cache import KeyCache, key_cache_for
from authkeep.keys.credits import credit_state, spend_credits
from authkeep.keys.format import MAX_KEY_LENGTH, key_digest, parse_key
from authkeep.keys.permissions import Expression, parse_permissions
from authkeep.keys.schemas import (
    Outcome,
    RateLimitRequest,
    RateLimitState,
    VerifyRequest,
    VerifyResult,
)
from authkeep.keys.snapshot import KeySnapshot, LimitRule, load_snapshot, with_usage
from authkeep.plans import thresholds
from authkeep.plans.entitlements import charge_quota, period_start

NOT_FOUND_JSON = VerifyResult(valid=False, code=Outcome.NOT_FOUND).model_dump_json().encode()


class UnknownRateLimit(ValidationFailed):
    code = "unknown_rate_limit"
    detail = "The key has no rate limit by that name."


@dataclass(slots=True)
class Verdict:
    """The outcome of the checks and what they learnt on the way."""

    outcome: Outcome
    ratelimits: list[RateLimitState] = field(default_factory=list)
    # Fresh from the database when credits were charged (or refused).
    credits: int | None = None
    # (feature, units used this month) when the plan quota was charged (or refused).
    quota_used: tuple[str, int] | None = None
    units: int = 0


class Verifier:
    """One per application (`verifier_for`): the server secret, the cache and the pipeline."""

    def __init__(self, app: Starlette) -> None:
        self.app = app
        self.secret: str = app.state.settings.secret_key.get_secret_value()
        self.cache: KeyCache[object] = key_cache_for(app)

    async def snapshot(self, raw_key: str) -> KeySnapshot | None:
        """The key's snapshot from the cache or the database; None for a malformed key (no
        database work) or an unknown one.

        The cache is asked before the key is parsed: only digests of real keys are ever
        cached, so a hit proves the key well formed, and a hit skips the parse."""
        if len(raw_key) > MAX_KEY_LENGTH:
            return None
        digest = key_digest(self.secret, raw_key)
        cached = self.cache.get(digest)
        if cached is not None:
            return cast(KeySnapshot, cached)
        if parse_key(raw_key) is None:
            return None
        generation = self.cache.generation
        loaded = await load_snapshot(self.app.state.database, digest)
        if loaded is not None and self.cache.generation == generation:
            self.cache.put(digest, loaded.key_id, loaded.user_id, loaded)
        return loaded

    async def authenticate(self, raw_key: str) -> KeySnapshot | None:
        """The key if it may be used at all: found, enabled, not expired, owner not blocked."""
        snapshot = await self.snapshot(raw_key)
        if snapshot is None or not snapshot.usable or snapshot.expired(time.time()):
            return None
        return snapshot

    async def verify(self, raw_key: str, request: VerifyRequest) -> bytes:
        """Answer one verification: the JSON of a `VerifyResult`. Caller errors (a malformed
        permissions expression, an unknown rate limit name) raise a 422 instead."""
        expression = None if request.permissions is None else parse_permissions(request.permissions)
        snapshot = await self.snapshot(raw_key)
        if snapshot is None:
            return NOT_FOUND_JSON
        verdict = await self.decide(snapshot, request, expression)
        if verdict.outcome is Outcome.NOT_FOUND:
            return NOT_FOUND_JSON
        self.app.state.meter.record(
            snapshot.key_id, snapshot.user_id, snapshot.owner, verdict.outcome.value, verdict.units
        )
        return answer(snapshot, verdict)

    async def decide(
        self, snapshot: KeySnapshot, request: VerifyRequest, expression: Expression | None
    ) -> Verdict:
        """The checks in the documented order; the first that fails is the outcome."""
        if snapshot.disabled:
            return Verdict(Outcome.DISABLED)
        if snapshot.expired(time.time()):
            return Verdict(Outcome.EXPIRED)
        feature = request.feature
        if snapshot.owner_blocked or (feature is not None and feature not in snapshot.features):
            return Verdict(Outcome.FORBIDDEN)
        if expression is not None and not expression.allows(snapshot.granted):
            return Verdict(Outcome.INSUFFICIENT_PERMISSIONS)
        states = await self.hit_rate_limits(snapshot, request.ratelimits)
        if states and states[-1].exceeded:
            metrics_for(self.app).refused("verify_ratelimit")
            return Verdict(Outcome.RATE_LIMITED, states)
        verdict = await self.charge(snapshot, request.cost, feature)
        verdict.ratelimits = states
        return verdict

    async def hit_rate_limits(
        self, snapshot: KeySnapshot, requested: list[RateLimitRequest] | None
    ) -> list[RateLimitState]:
        """Take the units from each limit in turn, stopping at the first that is exceeded."""
        wanted = wanted_limits(snapshot, requested)
        if not wanted:
            return []
        limiter = limiter_for(self.app)
        states: list[RateLimitState] = []
        for rule, cost in wanted:
            decision = await limiter.hit(
                snapshot.bucket_prefix + rule.name, rule.limit, rule.window_seconds, cost
            )
            states.append(
                RateLimitState(
                    name=rule.name,
                    limit=rule.limit,
                    remaining=decision.remaining,
                    reset=float(decision.retry_after),
                    exceeded=not decision.allowed,
                )
            )
            if not decision.allowed:
                break
        return states

    async def charge(self, snapshot: KeySnapshot, cost: int, feature: str | None) -> Verdict:
        """Take credits, then the plan quota of `feature`, in one unit of work, with the
        threshold events they cross (plans.thresholds: no query unless one is crossed); a
        refusal of either takes nothing. Without credits or a metered feature: no database."""
        quota = None if feature is None else snapshot.quotas.get(feature)
        if snapshot.credits is None and quota is None:
            return Verdict(Outcome.VALID, units=cost)
        now = utcnow()
        async with self.app.state.database.session_scope() as db:
            verdict = Verdict(Outcome.VALID, units=cost)
            if snapshot.credits is not None:
                verdict = await self.take_credits(db, snapshot, cost, now)
            if verdict.outcome is not Outcome.VALID or feature is None or quota is None:
                return verdict
            charged = await charge_quota(db, snapshot.user_id, feature, cost, quota, now)
            verdict.quota_used = (feature, charged.used)
            if not charged.allowed:
                # Give back the credits (and their event) taken above: a refused call is free.
                await db.rollback()
                left = None if verdict.credits is None else verdict.credits + cost
                return Verdict(Outcome.USAGE_EXCEEDED, credits=left, quota_used=verdict.quota_used)
            used_before = charged.used - cost
            await thresholds.note_quota(
                db, snapshot.user_id, feature, used_before, charged.used, quota, period_start(now)
            )
            return verdict

    async def take_credits(
        self, db: AsyncSession, snapshot: KeySnapshot, cost: int, now: datetime
    ) -> Verdict:
        """VALID with the credits left, or the refusal."""
        credits = await spend_credits(db, snapshot.key_id, cost, now)
        if credits is None:
            refusal = await self.credits_refusal(db, snapshot)
            # No refusal: the key was made unlimited since it was cached; nothing was owed.
            return refusal or Verdict(Outcome.VALID, units=cost)
        if cost > 0:
            await thresholds.note_credits(db, snapshot.key_id, snapshot.owner, credits, now)
        return Verdict(Outcome.VALID, credits=credits, units=cost)

    async def credits_refusal(self, db: AsyncSession, snapshot: KeySnapshot) -> Verdict | None:
        """Why the credits statement took nothing. None: the key no longer has credits at all
        (it was made unlimited since it was cached), so nothing was owed."""
        state = await credit_state(db, snapshot.key_id)
        if state is None or not state.usable or state.credits is None:
            # The cached snapshot is out of date: the next call reads the key again.
            self.cache.drop_key(snapshot.key_id)
        if state is None:
            return Verdict(Outcome.NOT_FOUND)
        if not state.usable:
            return Verdict(Outcome.DISABLED)
        if state.credits is None:
            return None
        return Verdict(Outcome.USAGE_EXCEEDED, credits=state.credits)


def wanted_limits(
    snapshot: KeySnapshot, requested: list[RateLimitRequest] | None
) -> list[tuple[LimitRule, int]]:
    """None: every limit of the key at cost 1. Otherwise the named ones at their cost."""
    if requested is None:
        return [(rule, 1) for rule in snapshot.rate_limits]
    wanted = []
    for item in requested:
        rule = snapshot.limits_by_name.get(item.name)
        if rule is None:
            raise UnknownRateLimit(f"ratelimits: this key has no rate limit named {item.name!r}.")
        wanted.append((rule, item.cost))
    return wanted


def answer(snapshot: KeySnapshot, verdict: Verdict) -> bytes:
    """The JSON answer for a found key. A plain VALID (nothing charged or limited on the
    way) is the snapshot's ready-made body."""
    plain = not (verdict.ratelimits or verdict.credits is not None or verdict.quota_used)
    if plain and verdict.outcome is Outcome.VALID:
        return snapshot.valid_json
    changes: dict[str, Any] = {
        "valid": verdict.outcome is Outcome.VALID,
        "code": verdict.outcome,
    }
    if verdict.ratelimits:
        changes["ratelimits"] = verdict.ratelimits
    if verdict.credits is not None:
        changes["credits_remaining"] = verdict.credits
    if verdict.quota_used is not None:
        feature, used = verdict.quota_used
        changes["entitlements"] = with_usage(snapshot.template.entitlements, feature, used)
    return snapshot.template.model_copy(update=changes).model_dump_json().encode()


def verifier_for(app: Starlette) -> Verifier:
    """The application's verifier, made on first use (after the lifespan set everything up)."""
    verifier: Verifier | None = getattr(app.state, "verifier", None)
    if verifier is None:
        verifier = Verifier(app)
        app.state.verifier = verifier
    return verifier
