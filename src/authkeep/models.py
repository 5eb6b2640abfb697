"""Every domain's models, imported so that `Base.metadata` is the one schema Alembic reads."""

from authkeep.audit.models import AuditEvent
from authkeep.core.models import Base
from authkeep.mfa.models import MfaFactor, RecoveryCode
from authkeep.sessions.models import Session
from authkeep.users.models import OneTimeToken, User

__all__ = ["AuditEvent", "Base", "MfaFactor", "OneTimeToken", "RecoveryCode", "Session", "User"]
