"""`authkeep keygen`: a new P-256 signing key for `AUTHKEEP_JWT_KEY`."""

from __future__ import annotations

from typing import Annotated

import typer

from authkeep.cli.output import stderr
from authkeep.tokens.keys import load_signing_key, new_signing_key_pem


def keygen(
    one_line: Annotated[
        bool,
        typer.Option(
            "--one-line",
            help="Print the private key on one line with \\n escapes, for .env files and "
            "systemd EnvironmentFile=.",
        ),
    ] = False,
) -> None:
    """Print a new P-256 private key (PEM, PKCS8) on stdout; its public key and `kid` on stderr.

    Only the private key goes to stdout, so it can be captured directly:

    Example: `fly secrets set AUTHKEEP_JWT_KEY="$(authkeep keygen)"`

    Example: `echo "AUTHKEEP_JWT_KEY=$(authkeep keygen --one-line)" >> /etc/authkeep/authkeep.env`
    """
    pem = new_signing_key_pem()
    key = load_signing_key(pem, "the generated key")
    typer.echo(pem.strip().replace("\n", "\\n") if one_line else pem.strip())
    stderr.print(f"kid: {key.kid}", markup=False)
    stderr.print(key.public_pem().strip(), markup=False)
