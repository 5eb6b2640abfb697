"""`authkeep config …`: what the process would run with."""

from __future__ import annotations

import typer

from authkeep.cli.output import JsonOption, Output
from authkeep.config import Settings, load_settings, resolve_role
from authkeep.core.dsn import display_url, normalise
from authkeep.errors import ConfigError

app = typer.Typer(help="Inspect the effective configuration.", no_args_is_help=True)

MASK = "********"


def effective_settings(settings: Settings) -> dict[str, object]:
    """Every setting with secrets masked; database URLs shown without credentials."""
    shown: dict[str, object] = {}
    for name, value in settings.model_dump().items():
        secret = getattr(settings, name)
        if name.startswith(("database_url", "auth_database_uri")) and value is not None:
            try:
                url = normalise(secret.get_secret_value(), name.upper(), connect_timeout=10)
                shown[name] = f"{display_url(url)} (password {MASK})"
            except Exception:
                shown[name] = MASK
        elif hasattr(secret, "get_secret_value"):
            shown[name] = MASK if value is not None else None
        else:
            shown[name] = (
                str(value)
                if value is not None and not isinstance(value, bool | int | float | list)
                else value
            )
    shown["effective.production"] = settings.is_production
    shown["effective.role"] = resolve_role(settings).value
    shown["effective.strict_db_bootstrap"] = settings.strict_bootstrap
    shown["effective.bind_host"] = settings.bind_host
    return shown


@app.command("show")
def show(json_output: JsonOption = False) -> None:
    """Print the effective settings, with every secret masked.

    Example: `AUTHKEEP_ENV=production authkeep config show --json`
    """
    out = Output(json_output)
    try:
        settings = load_settings()
    except ConfigError as exc:
        out.fail_with(exc)
    shown = effective_settings(settings)
    width = max(len(k) for k in shown)
    out.result(shown, "\n".join(f"{k.ljust(width)}  {v}" for k, v in shown.items()))
