"""`GET /.well-known/jwks.json`: the public keys other services verify our tokens with."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from pydantic import BaseModel

from authkeep.config import Settings
from authkeep.tokens.keys import KeySet

JWKS_CACHE_CONTROL = "public, max-age=300"

router = APIRouter(tags=["tokens"])


class JwkRead(BaseModel):
    """A public EC key. The schema has no `d`: a private scalar cannot be published by mistake."""

    kty: str
    crv: str
    x: str
    y: str
    kid: str
    use: str
    alg: str


class JwksRead(BaseModel):
    keys: list[JwkRead]


async def get_keyset(request: Request) -> KeySet:
    keyset: KeySet = request.app.state.keyset
    return keyset


AppKeySet = Annotated[KeySet, Depends(get_keyset)]


@router.get(
    "/.well-known/jwks.json",
    summary="Public signing keys (JWK Set): the current key and the next or retired one",
)
async def get_jwks(keyset: AppKeySet, response: Response) -> JwksRead:
    response.headers["Cache-Control"] = JWKS_CACHE_CONTROL
    return JwksRead.model_validate(keyset.jwks())


def install(app: FastAPI, settings: Settings) -> None:
    """Load the key set once (a bad key stops the start, naming its variable) and serve it."""
    app.state.keyset = KeySet.from_settings(settings)
    app.include_router(router)
