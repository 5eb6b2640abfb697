"""Plans, subscriptions and what they grant (SPEC §7). The admin API is a thin wrapper over
these functions; every change writes one audit row (CHK-AC-06) in the caller's unit of work.

Callers invalidate the key cache after commit for the users a change affects (the ids these
functions return), so verifications see a plan change at once.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from authkeep.audit import service as audit
from authkeep.core.models import utcnow
from authkeep.errors import AuthkeepError, Conflict, NotFound, ValidationFailed
from authkeep.keys.schemas import Entitlement
from authkeep.plans import entitlements
from authkeep.plans.models import Plan, Subscription
from authkeep.plans.schemas import (
    PlanCreate,
    PlanUpdate,
    SubscriptionCreate,
    SubscriptionRead,
    SubscriptionUpdate,
)
from authkeep.users.admin import Actor
from authkeep.users.models import User

T = TypeVar("T")


class PlanExists(Conflict):
    code = "plan_exists"
    detail = "A plan with this slug exists already."


class PlanInUse(Conflict):
    code = "plan_in_use"
    detail = "Subscriptions still use this plan: move them to another plan first."


class UnknownPlan(NotFound):
    code = "unknown_plan"
    detail = "No plan with this id."


class UnknownSubscription(NotFound):
    code = "unknown_subscription"
    detail = "No subscription with this id."


class LimitWithoutFeature(ValidationFailed):
    code = "limit_without_feature"
    detail = "Every limit must name a feature of the plan."


class EntitlementsUnavailable(AuthkeepError):
    """The entitlement or quota evaluation failed: deny, never guess (CHK-AC-07)."""

    code = "entitlements_unavailable"
    status_code = 503
    detail = "Entitlements cannot be evaluated right now. Try again shortly."
    headers = {"Retry-After": "5"}


# ---- plans ------------------------------------------------------------------------------------


def _check_limits(features: list[str], limits: dict[str, int]) -> None:
    unknown = sorted(set(limits) - set(features))
    if unknown:
        raise LimitWithoutFeature(f"Limits name features the plan does not grant: {unknown}.")


async def _record(
    db: AsyncSession, actor: Actor, action: str, target: str, detail: dict[str, Any]
) -> None:
    await audit.record(
        db,
        action,
        "success",
        request=actor.request,
        actor_id=actor.user_id,
        actor=actor.name,
        target=target,
        detail=detail,
    )


async def _flush_unique_slug(db: AsyncSession) -> None:
    """Flush, turning a slug clash (lost race with another request) into `PlanExists`."""
    try:
        await db.flush()
    except IntegrityError as exc:
        raise PlanExists() from exc


async def _slug_taken(db: AsyncSession, slug: str) -> bool:
    return await db.scalar(select(Plan.id).where(Plan.slug == slug)) is not None


async def create_plan(db: AsyncSession, data: PlanCreate, actor: Actor) -> Plan:
    """A new plan; `PlanExists` when the slug is taken."""
    _check_limits(data.features, data.limits)
    if await _slug_taken(db, data.slug):
        raise PlanExists()
    plan = Plan(slug=data.slug, name=data.name, features=data.features, limits=data.limits)
    db.add(plan)
    await _flush_unique_slug(db)
    await _record(db, actor, "admin.plan.create", str(plan.id), {"slug": plan.slug})
    return plan


async def list_plans(db: AsyncSession) -> list[Plan]:
    return list((await db.scalars(select(Plan).order_by(Plan.slug))).all())


async def get_plan(db: AsyncSession, plan_id: uuid.UUID) -> Plan:
    plan = await db.get(Plan, plan_id)
    if plan is None:
        raise UnknownPlan()
    return plan


async def subscribers(db: AsyncSession, plan_id: uuid.UUID) -> list[uuid.UUID]:
    """Every user with a subscription to the plan, in any status."""
    rows = await db.scalars(
        select(Subscription.user_id).where(Subscription.plan_id == plan_id).distinct()
    )
    return list(rows.all())


async def update_plan(
    db: AsyncSession, plan: Plan, data: PlanUpdate, actor: Actor
) -> list[uuid.UUID]:
    """Apply the fields sent; returns the users whose grant may have changed."""
    features = data.features if data.features is not None else list(plan.features)
    limits = data.limits if data.limits is not None else dict(plan.limits)
    _check_limits(features, limits)
    if data.slug is not None and data.slug != plan.slug and await _slug_taken(db, data.slug):
        raise PlanExists()
    changes = sorted(data.model_fields_set & {"slug", "name", "features", "limits"})
    for name in changes:
        value = getattr(data, name)
        if value is not None:
            setattr(plan, name, value)
    plan.updated_at = utcnow()
    await _flush_unique_slug(db)
    detail = {"slug": plan.slug, "changes": changes}
    await _record(db, actor, "admin.plan.update", str(plan.id), detail)
    return await subscribers(db, plan.id)


async def delete_plan(db: AsyncSession, plan: Plan, actor: Actor) -> None:
    """Delete a plan no subscription uses (any status); else `PlanInUse`."""
    used = await db.scalar(
        select(func.count()).select_from(Subscription).where(Subscription.plan_id == plan.id)
    )
    if used:
        raise PlanInUse(
            f"{used} subscription(s) still use this plan: move them to another plan first."
        )
    await db.execute(delete(Plan).where(Plan.id == plan.id))
    await _record(db, actor, "admin.plan.delete", str(plan.id), {"slug": plan.slug})


# ---- subscriptions ----------------------------------------------------------------------------


def read_subscription(subscription: Subscription, plan: Plan) -> SubscriptionRead:
    return SubscriptionRead(
        id=subscription.id,
        user_id=subscription.user_id,
        plan_id=subscription.plan_id,
        plan=plan.slug,
        status=subscription.status,
        seats=subscription.seats,
        current_period_end=subscription.current_period_end,
        created_at=subscription.created_at,
        updated_at=subscription.updated_at,
    )


async def create_subscription(
    db: AsyncSession, user: User, data: SubscriptionCreate, actor: Actor
) -> SubscriptionRead:
    """Subscribe the user to a plan. A user may hold several; the newest active one grants."""
    plan = await get_plan(db, data.plan_id)
    subscription = Subscription(
        user_id=user.id,
        plan_id=plan.id,
        status=data.status,
        seats=data.seats,
        current_period_end=data.current_period_end,
    )
    db.add(subscription)
    await db.flush()
    detail = {
        "email": user.email,
        "subscription_id": str(subscription.id),
        "plan": plan.slug,
        "status": subscription.status,
    }
    await _record(db, actor, "admin.subscription.create", str(user.id), detail)
    return read_subscription(subscription, plan)


async def get_subscription(db: AsyncSession, subscription_id: uuid.UUID) -> Subscription:
    subscription = await db.get(Subscription, subscription_id)
    if subscription is None:
        raise UnknownSubscription()
    return subscription


async def update_subscription(
    db: AsyncSession, subscription: Subscription, data: SubscriptionUpdate, actor: Actor
) -> SubscriptionRead:
    """Apply the fields sent (status, seats, period end, plan)."""
    changes = sorted(data.model_fields_set)
    if data.plan_id is not None:
        subscription.plan_id = (await get_plan(db, data.plan_id)).id
    if data.status is not None:
        subscription.status = data.status
    if data.seats is not None:
        subscription.seats = data.seats
    if "current_period_end" in data.model_fields_set:
        subscription.current_period_end = data.current_period_end
    subscription.updated_at = utcnow()
    await db.flush()
    plan = await get_plan(db, subscription.plan_id)
    detail = {
        "subscription_id": str(subscription.id),
        "plan": plan.slug,
        "status": subscription.status,
        "changes": changes,
    }
    await _record(db, actor, "admin.subscription.update", str(subscription.user_id), detail)
    return read_subscription(subscription, plan)


async def list_subscriptions(db: AsyncSession, user_id: uuid.UUID) -> list[SubscriptionRead]:
    rows = await db.execute(
        select(Subscription, Plan)
        .join(Plan, Plan.id == Subscription.plan_id)
        .where(Subscription.user_id == user_id)
        .order_by(Subscription.created_at.desc())
    )
    return [read_subscription(subscription, plan) for subscription, plan in rows.all()]


# ---- entitlements -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Standing:
    """What a user's active plan grants this month, feature by feature."""

    plan: str | None
    entitlements: dict[str, Entitlement]


async def fail_closed(evaluation: Awaitable[T]) -> T:
    """Await an entitlement, quota or credit evaluation; any failure becomes
    `EntitlementsUnavailable` (503), never an answer that might allow too much (CHK-AC-07).
    Errors that already have their own answer (e.g. the database outage 503) pass as they are.
    """
    try:
        return await evaluation
    except AuthkeepError:
        raise
    except Exception as exc:
        raise EntitlementsUnavailable() from exc


async def _grant_and_usage(
    db: AsyncSession, user_id: uuid.UUID
) -> tuple[entitlements.Grant, list[str], dict[str, int]]:
    grant = await entitlements.grant_for(db, user_id)
    features = sorted(grant.features)
    return grant, features, await entitlements.quota_used(db, user_id, features)


async def standing(db: AsyncSession, user_id: uuid.UUID) -> Standing:
    """The user's plan and, per granted feature, limit, used and balance (fails closed)."""
    grant, features, used = await fail_closed(_grant_and_usage(db, user_id))
    return Standing(
        grant.plan,
        {
            feature: Entitlement(
                feature=feature,
                limit=grant.limits.get(feature),
                used=used[feature],
                balance=entitlements.balance(grant.limits.get(feature), used[feature]),
            )
            for feature in features
        },
    )


NOT_GRANTED_BALANCE = 0


def entitlement_of(found: Standing, feature: str) -> Entitlement:
    """The feature's line in `found`; a feature the plan does not grant has balance 0."""
    granted = found.entitlements.get(feature)
    if granted is not None:
        return granted
    return Entitlement(feature=feature, limit=None, used=0, balance=NOT_GRANTED_BALANCE)
