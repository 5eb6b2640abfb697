"""The ASGI application: `create_app(settings)` wires routers by mode; the lifespan opens the
database chosen by the bootstrap and closes it on shutdown. Nothing is created at import time.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from authkeep import __version__
from authkeep.config import Role, Settings, load_settings, resolve_role
from authkeep.core import health, metrics, migrate, redis_client
from authkeep.core.apilimits import ApiLimitMiddleware
from authkeep.core.bootstrap import select_database
from authkeep.core.clientip import parse_networks
from authkeep.core.db import Database
from authkeep.core.headers import SecurityHeadersMiddleware, add_cors
from authkeep.core.mailer import mailer_for
from authkeep.core.ratelimit import MemoryRateLimiter
from authkeep.core.ratelimit_redis import RedisRateLimiter
from authkeep.core.redis_bus import RedisInvalidations
from authkeep.core.request_context import RequestIdMiddleware
from authkeep.core.secrets import ensure_secrets
from authkeep.core.security import PasswordHashing, default_hash_workers
from authkeep.core.services import BackgroundService, add_service, services_of
from authkeep.deploy import routes as deploy_routes
from authkeep.errors import ConfigError, install_error_handlers
from authkeep.keys import routes as keys_routes
from authkeep.keys import verify_routes
from authkeep.keys.cache import KeyCache, LocalInvalidations
from authkeep.mfa import routes as mfa_routes
from authkeep.plans import routes as plans_routes
from authkeep.plans.webhooks import WebhookDeliverer
from authkeep.sessions.cookies import CSRF_HEADER, PLAIN_NAME, SECURE_NAME, is_https
from authkeep.tokens import routes as token_routes
from authkeep.usage import routes as usage_routes
from authkeep.usage.meter import UsageMeter
from authkeep.users import admin_routes as admin_api
from authkeep.users import email_routes
from authkeep.users import routes as users_routes
from authkeep.users.delays import MemoryDelays, RedisDelays

logger = logging.getLogger("authkeep")


def prepare(settings: Settings) -> Settings:
    """Settings ready to serve: secrets present (generated in standalone) and a servable role."""
    # The role first: on Fly it depends on whether the data dir exists, and generating
    # secrets creates that directory.
    check_role(settings)
    return ensure_secrets(settings)


def check_role(settings: Settings) -> Role:
    """Standalone and login serve everything; edge nodes are not part of this release."""
    role = resolve_role(settings)
    if role is Role.EDGE:
        if settings.login_url is None and settings.fly_app_name is None:
            raise ConfigError(
                "This node resolved to the edge role but cannot find login: set AUTHKEEP_LOGIN_URL."
            )
        raise ConfigError(
            "The edge role is not available in this version of authkeep. Run this node as "
            "standalone or login (set AUTHKEEP_ROLE=login, or mount the data volume)."
        )
    return role


async def open_database(settings: Settings) -> Database:
    """Select the DSN, build the engine from it, and make sure the schema is at head.

    Standalone SQLite migrates itself; PostgreSQL refuses a schema that is behind and names
    the command to run, because migrations belong to the deploy step, not to every node.
    """
    selection = await select_database(settings)
    database = Database.open(selection.candidate, settings)
    try:
        if not selection.reachable:
            return database
        if database.is_sqlite:
            report = await migrate.upgrade(database.engine)
            if report.changed:
                logger.info("SQLite schema migrated %s -> %s", report.before, report.after)
        else:
            await migrate.require_head(database.engine)
            # Production refuses a superuser or table owner; development warns (CHK-OP-01).
            from authkeep.ops.roles import enforce_runtime_role

            await enforce_runtime_role(database.engine, production=settings.is_production)
    except BaseException:
        await database.dispose()
        raise
    return database


def create_app(settings: Settings, database: Database | None = None) -> FastAPI:
    """Build the application for these settings. Routers are chosen by mode in one block.

    `database` is one already opened by `open_database` (the CLI does that first so bootstrap
    errors print cleanly); without it the lifespan opens one.
    """
    settings = prepare(settings)
    role = resolve_role(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.database = database or await open_database(settings)
        await admin_api.announce_setup_link(app)  # standalone development only (users.setup_link)
        started: list[BackgroundService] = []
        try:
            for service in services_of(app):
                await service.start(app.state.database)
                started.append(service)
            logger.info(
                "authkeep %s ready (%s, %s)",
                __version__,
                role.value,
                "production" if settings.is_production else "development",
            )
            yield
        finally:
            # Reverse order: the usage meter's last flush runs while the database is open.
            for service in reversed(started):
                await service.stop()
            await app.state.database.dispose()
            app.state.passwords.close()

    # No trailing-slash redirects: Starlette builds their Location from the Host header (BI-05).
    app = FastAPI(title="authkeep", version=__version__, lifespan=lifespan, redirect_slashes=False)
    app.state.settings = settings
    app.state.role = role
    app.state.trusted_proxies = parse_networks(settings.trusted_proxies)
    app.state.mailer = mailer_for(settings)
    app.state.passwords = PasswordHashing(
        workers=settings.hash_concurrency or default_hash_workers(),
        queue_limit=settings.hash_queue_limit,
    )
    app.state.key_cache = KeyCache[object](settings.key_cache_seconds)
    app.state.metrics = metrics.Metrics()
    install_limits_and_invalidations(app, settings)
    app.state.meter = UsageMeter(settings)
    add_service(app, app.state.meter)
    app.state.webhooks = WebhookDeliverer(settings)
    add_service(app, app.state.webhooks)
    app.add_middleware(ApiLimitMiddleware, credential_cookies=(SECURE_NAME, PLAIN_NAME))
    install_error_handlers(app)
    add_cors(app, settings.trusted_origins, allow_headers=(CSRF_HEADER,))  # CHK-CK-05
    app.add_middleware(RequestIdMiddleware)
    # Outermost: every answer, the error and limit layers' own too, gets the headers (CHK-CK-04).
    app.add_middleware(
        SecurityHeadersMiddleware, is_https=lambda request: is_https(request, settings)
    )

    app.include_router(health.router)
    # The same checks under /api, so a proxy that forwards only /api/* reaches them (seed 002).
    app.include_router(health.router, prefix="/api", include_in_schema=False)
    if settings.metrics_enabled:  # otherwise 404, like any unknown path (CHK-API-07)
        app.include_router(metrics.router)
    # The hot path right after health: each router in front of a route costs every request
    # to it a match attempt (about a third of a cache-hit verify when it came after auth).
    app.include_router(verify_routes.router)
    app.include_router(deploy_routes.router)
    app.include_router(users_routes.router)
    app.include_router(mfa_routes.router)
    app.include_router(email_routes.router)
    app.include_router(keys_routes.router)
    app.include_router(usage_routes.router)
    app.include_router(plans_routes.router)
    token_routes.install(app, settings)
    admin_api.install(app, settings)
    return app


def install_limits_and_invalidations(app: FastAPI, settings: Settings) -> None:
    """One node keeps rate-limit counters, sign-in delays and cache invalidations in
    process; with AUTHKEEP_REDIS_URL every node shares them through Redis (SPEC §9)."""
    if settings.redis_url is None:
        app.state.limiter = MemoryRateLimiter()
        app.state.api_limiter = MemoryRateLimiter()  # core.apilimits: a bounded memory of its own
        app.state.sign_in_delays = MemoryDelays()
        app.state.invalidations = LocalInvalidations(app.state.key_cache)
        return
    client = redis_client.connect(settings.redis_url)
    add_service(app, redis_client.RedisConnection(client))  # stops after its users
    app.state.limiter = app.state.api_limiter = RedisRateLimiter(client)
    app.state.sign_in_delays = RedisDelays(client)
    app.state.invalidations = RedisInvalidations(client, app.state.key_cache)
    add_service(app, app.state.invalidations)


def create_app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory` and multi-worker serving: settings read once per process."""
    from authkeep.core.logs import setup_logging

    settings = load_settings()
    setup_logging(settings)
    return create_app(settings)
