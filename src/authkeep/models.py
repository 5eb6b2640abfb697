"""Every domain's models, imported so that `Base.metadata` is the one schema Alembic reads."""

from authkeep.core.models import Base
from authkeep.users.models import User

__all__ = ["Base", "User"]
