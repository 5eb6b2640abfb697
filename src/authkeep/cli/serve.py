"""`authkeep serve`: run the HTTP server."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import typer
import uvicorn
from sqlalchemy.exc import DBAPIError
from uvicorn.loops.auto import auto_loop_factory

from authkeep.cli.output import Output, stderr
from authkeep.config import Settings, load_settings
from authkeep.core.logs import setup_logging
from authkeep.errors import AuthkeepError

GRACEFUL_SHUTDOWN_SECONDS = 30


def serve(
    host: Annotated[
        str | None,
        typer.Option(
            help="Bind address. Default: 127.0.0.1 in "
            "development, 0.0.0.0 in production and on Fly."
        ),
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port (default AUTHKEEP_PORT or 8080).")] = None,
    workers: Annotated[
        int | None, typer.Option(help="Worker processes (default AUTHKEEP_WORKERS or 1).")
    ] = None,
) -> None:
    """Serve authkeep. Stops gracefully on SIGTERM/SIGINT: in-flight requests finish first.

    Example: `authkeep serve --port 8080`
    """
    out = Output()
    overrides = {
        k: v for k, v in {"host": host, "port": port, "workers": workers}.items() if v is not None
    }
    try:
        settings = load_settings(**overrides)
    except AuthkeepError as exc:
        out.fail_with(exc)
    setup_logging(settings)
    try:
        if settings.workers == 1:
            # The event loop uvicorn itself would pick (uvloop where installed), as with workers.
            with asyncio.Runner(loop_factory=auto_loop_factory(use_subprocess=False)) as runner:
                runner.run(_serve_one(settings))
        else:
            _serve_many(settings)
    except AuthkeepError as exc:
        out.fail_with(exc)
    except DBAPIError as exc:
        out.fail_database(exc)


def _uvicorn_options(settings: Settings) -> dict[str, Any]:
    return {
        "host": settings.bind_host,
        "port": settings.port,
        "log_config": None,
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_SECONDS,
        # Client IPs come only from authkeep's own trusted-proxy rules, never a blanket trust.
        "proxy_headers": False,
        "server_header": False,
    }


def _announce(settings: Settings) -> None:
    shown = "127.0.0.1" if settings.bind_host in {"0.0.0.0", "::"} else settings.bind_host  # noqa: S104
    stderr.print(
        f"authkeep listening on [bold]http://{shown}:{settings.port}[/] "
        f"(bound to {settings.bind_host}; API docs at /docs, health at /health)"
    )


async def _serve_one(settings: Settings) -> None:
    # Open the database before the server exists, so bootstrap errors end the process cleanly.
    from authkeep.app import create_app, open_database, prepare

    settings = prepare(settings)
    app = create_app(settings, await open_database(settings))
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", **_uvicorn_options(settings)))
    _announce(settings)
    await server.serve()
    if not server.started:
        raise typer.Exit(1)


def _serve_many(settings: Settings) -> None:
    from authkeep.app import create_app, open_database, prepare

    async def preflight() -> None:
        # Fail fast in the parent with a clean message; each worker repeats the bootstrap.
        # Building the app once surfaces its own configuration errors (signing keys, mailer).
        ready = prepare(settings)
        database = await open_database(ready)
        try:
            create_app(ready, database).state.passwords.close()
        finally:
            await database.dispose()

    asyncio.run(preflight())
    _announce(settings)
    uvicorn.run(
        "authkeep.app:create_app_from_env",
        factory=True,
        workers=settings.workers,
        **_uvicorn_options(settings),
    )
