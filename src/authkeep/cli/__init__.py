"""The `authkeep` command: one module per command group, each a thin wrapper over the library."""

from __future__ import annotations

import typer

from authkeep import __version__
from authkeep.cli import config, db, deploy, doctor, keygen, serve

app = typer.Typer(
    name="authkeep",
    help="authkeep: a self-hosted auth backend and the operations around its database.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
)
app.command("serve")(serve.serve)
app.add_typer(db.app, name="db")
app.add_typer(config.app, name="config")
app.command("init-auth-db")(db.init_auth_db)
app.command("keygen")(keygen.keygen)
app.add_typer(deploy.app, name="deploy")
app.command("doctor")(doctor.doctor)
from authkeep.cli import users  # noqa: E402

app.add_typer(users.app, name="users")


@app.command("version")
def version() -> None:
    """Print the authkeep version."""
    typer.echo(__version__)


def main() -> None:
    app()
