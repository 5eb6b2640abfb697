"""Plans and subscriptions for admins (`/api/admin/plans`, `/api/admin/…/subscriptions`) and
entitlements for everyone (`/api/entitlements`, `/api/entitlements/check`).

Admin routes follow the admin API's rules (`users.admin_routes`): no session → 401, a non-admin
→ 403 `forbidden` (audited as `admin.access` / `denied`), changes need a fresh session (403
`reauth_required`) and write one audit row each (`admin.plan.*`, `admin.subscription.*`).
A change that may alter a user's grant commits, then drops that user's entries from every
node's verify cache.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from fastapi import APIRouter, Request, Response
from sqlalchemy.ext.asyncio import AsyncSession

from authkeep.config import Settings
from authkeep.core.deps import DB
from authkeep.core.models import utcnow
from authkeep.keys.cache import invalidations_for
from authkeep.plans import service as plans
from authkeep.plans.asker import Asker
from authkeep.plans.entitlements import period_start
from authkeep.plans.models import Plan
from authkeep.plans.schemas import (
    EntitlementAnswer,
    EntitlementCheck,
    EntitlementsRead,
    PlanCreate,
    PlanList,
    PlanRead,
    PlanUpdate,
    SubscriptionCreate,
    SubscriptionList,
    SubscriptionRead,
    SubscriptionUpdate,
)
from authkeep.sessions.deps import CurrentSession
from authkeep.users import admin
from authkeep.users.admin_routes import Admin, FreshAdmin
from authkeep.users.routes import AuthRoute

PLAN_BODY_LIMIT = 64 * 1024


class PlanRoute(AuthRoute):
    """`AuthRoute` with room for a plan's 100 features and limits."""

    def max_body_bytes(self, settings: Settings) -> int:
        return max(PLAN_BODY_LIMIT, super().max_body_bytes(settings))


admin_router = APIRouter(prefix="/api/admin", tags=["admin", "plans"], route_class=PlanRoute)
entitlements_router = APIRouter(prefix="/api/entitlements", tags=["plans"], route_class=AuthRoute)
router = APIRouter()


async def committed_change(db: AsyncSession, request: Request, users: Iterable[uuid.UUID]) -> None:
    """Commit the unit of work, then drop these users' grants from every node's verify cache."""
    await db.commit()
    invalidations = invalidations_for(request.app)
    for user_id in users:
        await invalidations.user_changed(user_id)


def plan_read(plan: Plan) -> PlanRead:
    return PlanRead.model_validate(plan, from_attributes=True)


# ---- plans ------------------------------------------------------------------------------------


@admin_router.post("/plans", status_code=201, response_model=PlanRead)
async def create_plan(
    body: PlanCreate, principal: FreshAdmin, db: DB, request: Request
) -> PlanRead:
    """A new plan: a unique slug (409 `plan_exists`), features, and monthly limits per feature."""
    plan = await plans.create_plan(db, body, admin.Actor.of(principal, request))
    return plan_read(plan)


@admin_router.get("/plans", response_model=PlanList)
async def list_plans(principal: Admin, db: DB) -> PlanList:
    """Every plan, by slug."""
    return PlanList(plans=[plan_read(p) for p in await plans.list_plans(db)])


@admin_router.get("/plans/{plan_id}", response_model=PlanRead)
async def get_plan(plan_id: uuid.UUID, principal: Admin, db: DB) -> PlanRead:
    return plan_read(await plans.get_plan(db, plan_id))


@admin_router.patch("/plans/{plan_id}", response_model=PlanRead)
async def update_plan(
    plan_id: uuid.UUID, body: PlanUpdate, principal: FreshAdmin, db: DB, request: Request
) -> PlanRead:
    """Change the fields sent; every subscriber's grant is refreshed at once."""
    plan = await plans.get_plan(db, plan_id)
    affected = await plans.update_plan(db, plan, body, admin.Actor.of(principal, request))
    answer = plan_read(plan)
    await committed_change(db, request, affected)
    return answer


@admin_router.delete("/plans/{plan_id}", status_code=204)
async def delete_plan(
    plan_id: uuid.UUID, principal: FreshAdmin, db: DB, request: Request
) -> Response:
    """Delete a plan that no subscription uses (409 `plan_in_use` otherwise)."""
    plan = await plans.get_plan(db, plan_id)
    await plans.delete_plan(db, plan, admin.Actor.of(principal, request))
    return Response(status_code=204)


# ---- subscriptions ----------------------------------------------------------------------------


@admin_router.post(
    "/users/{user_id}/subscriptions", status_code=201, response_model=SubscriptionRead
)
async def create_subscription(
    user_id: uuid.UUID,
    body: SubscriptionCreate,
    principal: FreshAdmin,
    db: DB,
    request: Request,
) -> SubscriptionRead:
    """Subscribe the user to a plan; only status `active` grants its features."""
    user = await admin.find(db, user_id)
    actor = admin.Actor.of(principal, request)
    answer = await plans.create_subscription(db, user, body, actor)
    await committed_change(db, request, [user.id])
    return answer


@admin_router.get("/users/{user_id}/subscriptions", response_model=SubscriptionList)
async def list_subscriptions(user_id: uuid.UUID, principal: Admin, db: DB) -> SubscriptionList:
    """The user's subscriptions, newest first, in every status."""
    user = await admin.find(db, user_id)
    return SubscriptionList(subscriptions=await plans.list_subscriptions(db, user.id))


@admin_router.patch("/subscriptions/{subscription_id}", response_model=SubscriptionRead)
async def update_subscription(
    subscription_id: uuid.UUID,
    body: SubscriptionUpdate,
    principal: FreshAdmin,
    db: DB,
    request: Request,
) -> SubscriptionRead:
    """Change status, seats, period end or plan; the user's grant is refreshed at once."""
    subscription = await plans.get_subscription(db, subscription_id)
    actor = admin.Actor.of(principal, request)
    answer = await plans.update_subscription(db, subscription, body, actor)
    await committed_change(db, request, [subscription.user_id])
    return answer


# ---- entitlements -----------------------------------------------------------------------------


@entitlements_router.get("", response_model=EntitlementsRead)
async def read_entitlements(principal: CurrentSession, db: DB) -> EntitlementsRead:
    """Your active plan and, per feature, this month's limit, units used and balance."""
    found = await plans.standing(db, principal.user.id)
    return EntitlementsRead(
        plan=found.plan,
        period_start=period_start(utcnow()),
        entitlements=list(found.entitlements.values()),
    )


@entitlements_router.post("/check", response_model=EntitlementAnswer)
async def check_entitlement(body: EntitlementCheck, asker: Asker, db: DB) -> EntitlementAnswer:
    """Is `feature` allowed for this user (default: the caller, or the API key's owner)?

    A user may ask about themselves, an admin about anyone, an API key (`X-API-Key`) about its
    owner; with a key the answer also carries the key's remaining `credits`.
    Evaluation errors answer 503 `entitlements_unavailable`, never a guess (CHK-AC-07).
    """
    user = await asker.subject(db, body.user_id)
    found = await plans.standing(db, user.id)
    credits = await plans.fail_closed(asker.credits(db))
    line = plans.entitlement_of(found, body.feature)
    allowed = (
        body.feature in found.entitlements
        and user.disabled_at is None
        and (line.balance is None or line.balance > 0)
        and (credits is None or credits > 0)
    )
    return EntitlementAnswer(
        allowed=allowed,
        feature=body.feature,
        plan=found.plan,
        limit=line.limit,
        used=line.used,
        balance=line.balance,
        credits=credits,
    )


router.include_router(admin_router)
router.include_router(entitlements_router)
