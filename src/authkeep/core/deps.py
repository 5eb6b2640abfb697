"""Request dependencies shared by every domain.

They are `async def` although they do not await: FastAPI runs a plain `def` dependency in a
worker thread, one thread hop per request for a dictionary lookup."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from authkeep.config import Settings
from authkeep.core.db import Database


async def get_database(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_db(request: Request) -> AsyncIterator[AsyncSession]:
    """One unit of work per request: committed before the response is sent, rolled back on error."""
    database: Database = request.app.state.database
    async with database.session_scope() as db:
        yield db


DB = Annotated[AsyncSession, Depends(get_db, scope="function")]
AppSettings = Annotated[Settings, Depends(get_settings)]
AppDatabase = Annotated[Database, Depends(get_database)]
