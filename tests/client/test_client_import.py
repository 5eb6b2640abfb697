"""The client is a light import (no server app, no ORM), and what it mirrors from the server
stays in step with it."""

from __future__ import annotations

import json
import subprocess
import sys

from authkeep.client.schemas import SessionInfo
from authkeep.client.usage import MAX_REPORT_COUNT
from authkeep.usage.schemas import MAX_REPORTED_COUNT
from authkeep.users.schemas import CurrentSessionRead


def test_importing_the_client_loads_neither_the_server_app_nor_the_database_layer() -> None:
    code = (
        "import json, sys, authkeep.client, authkeep.client.fastapi; "
        "print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout))
    heavy = {"sqlalchemy", "alembic", "asyncpg", "aiosqlite", "authkeep.app", "authkeep.core.db"}
    assert not heavy & loaded
    assert not [m for m in loaded if m.endswith(".models") and m.startswith("authkeep")]


def test_session_info_mirrors_the_server_session_answer() -> None:
    client_schema = SessionInfo.model_json_schema()
    server_schema = CurrentSessionRead.model_json_schema()
    assert client_schema["properties"].keys() == server_schema["properties"].keys()
    assert client_schema["required"] == server_schema["required"]
    assert client_schema["properties"]["csrf_token"]["type"] == "string"
    assert server_schema["properties"]["csrf_token"]["type"] == "string"
    for model in ("user", "session"):
        client_ref = client_schema["properties"][model]["$ref"].rsplit("/", 1)[1]
        server_ref = server_schema["properties"][model]["$ref"].rsplit("/", 1)[1]
        client_fields = client_schema["$defs"][client_ref]
        server_fields = server_schema["$defs"][server_ref]
        assert client_fields["properties"] == server_fields["properties"]
        assert client_fields["required"] == server_fields["required"]


def test_reports_are_split_at_the_servers_bound() -> None:
    assert MAX_REPORT_COUNT == MAX_REPORTED_COUNT
