"""Every domain's models, imported so that `Base.metadata` is the one schema Alembic reads."""

from authkeep.audit.models import AuditEvent
from authkeep.core.models import Base
from authkeep.keys.models import ApiKey
from authkeep.mfa.models import MfaFactor, RecoveryCode
from authkeep.plans.models import Plan, QuotaCounter, Subscription, ThresholdEvent
from authkeep.sessions.models import Session
from authkeep.usage.models import UsageRollup
from authkeep.users.models import OneTimeToken, User

__all__ = [
    "ApiKey",
    "AuditEvent",
    "Base",
    "MfaFactor",
    "OneTimeToken",
    "Plan",
    "QuotaCounter",
    "RecoveryCode",
    "Session",
    "Subscription",
    "ThresholdEvent",
    "UsageRollup",
    "User",
]
