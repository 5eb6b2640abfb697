"""Background services the app starts after the database is open and stops before it closes
(the usage meter's flusher, the webhook deliverer, the Redis invalidation listener).

Each registers itself with `add_service(app, service)` while the app is built; the lifespan
starts them in order and stops them in reverse, so the meter's final flush still has a database.
"""

from __future__ import annotations

from typing import Protocol

from starlette.applications import Starlette

from authkeep.core.db import Database


class BackgroundService(Protocol):
    async def start(self, database: Database) -> None: ...

    async def stop(self) -> None: ...


def add_service(app: Starlette, service: BackgroundService) -> None:
    services: list[BackgroundService] = getattr(app.state, "services", [])
    services.append(service)
    app.state.services = services


def services_of(app: Starlette) -> list[BackgroundService]:
    services: list[BackgroundService] = getattr(app.state, "services", [])
    return services
