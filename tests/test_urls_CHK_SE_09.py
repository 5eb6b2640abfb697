"""CHK-SE-09 (ASVS5 14.2.1): no session token, API key or JWT ever in a URL.

Three proofs:
1. Static: no route declares a query or path parameter named like a credential, in the OpenAPI
   schema or among the routes left out of it, and no code reads the query string by hand.
2. Live, both engines: a valid session token sent only in the query string, under every name a
   client might try, authenticates nothing (401) on a sample of protected routes, while the
   same token in the header works.
3. Live, API keys in the query string: `POST /api/entitlements/check` here. The other
   key-authenticated routes are covered where they live (CHK-AK-02):
   tests/keys/test_verify_outcomes.py (`/api/keys/verify`), tests/usage/test_usage_routes.py
   (`/api/usage/report`), tests/keys/test_keys_crud.py (key routes and ids),
   tests/client/test_client_fastapi.py (the SDK's dependency).

No WebSocket endpoint exists yet, so there is no upgrade URL to check
(tests/users/test_pathways_CHK_BF_06.py fails when one appears).
"""

from __future__ import annotations

import ast
import importlib
import logging
import pkgutil
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

import authkeep
from admin.admin_helpers import signed_in_admin
from authkeep.app import create_app
from keys.key_helpers import create_key
from support.secrets_scan import FIGURES, SCAN
from users.identity_helpers import bearer, new_user

# A parameter named like any credential. Deliberately broad ("key" also matches `key_id`,
# "session" matches `session_id`): the allow rule below has to clear each match.
CREDENTIAL_NAME = re.compile(
    r"token|key|secret|passw|session|jwt|code|otp|credential|auth|bearer|cookie|sig", re.I
)
# Query names a client might put a credential under; none of them may authenticate.
QUERY_NAMES = (
    "token",
    "access_token",
    "session",
    "session_token",
    "authkeep_session",
    "api_key",
    "key",
    "jwt",
)


def is_database_id(schema: dict[str, Any]) -> bool:
    """The allow rule: a UUID parameter (`key_id`, `session_id`, `user_id` …) is a database
    id, which grants nothing by itself (every route that takes one checks the caller owns the
    row, CHK-AC-*). Only `format: uuid` qualifies (alone, or or-null), never a free string."""
    options = schema.get("anyOf", [schema])
    formats = {option.get("format") for option in options if option.get("type") != "null"}
    return formats == {"uuid"}


def openapi_findings(app: FastAPI) -> tuple[int, list[str]]:
    scanned, findings = 0, []
    spec = app.openapi()
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            for parameter in operation.get("parameters", []):
                if parameter["in"] not in ("query", "path"):
                    continue
                scanned += 1
                name = parameter["name"]
                if CREDENTIAL_NAME.search(name) and not is_database_id(parameter["schema"]):
                    findings.append(f"{method.upper()} {path}: {parameter['in']} {name}")
    for name, scheme in spec.get("components", {}).get("securitySchemes", {}).items():
        if scheme.get("in") == "query":
            findings.append(f"security scheme {name} reads the query string")
    return scanned, findings


def every_router() -> list[APIRouter]:
    """Every APIRouter defined in authkeep, whether or not its routes are in the schema."""
    routers: list[APIRouter] = []
    for info in pkgutil.walk_packages(authkeep.__path__, "authkeep."):
        if ".migrations" in info.name or info.name.endswith("__main__"):
            continue  # Alembic scripts, and `python -m authkeep` (runs the CLI on import)
        module = importlib.import_module(info.name)
        routers.extend(obj for obj in vars(module).values() if isinstance(obj, APIRouter))
    return routers


def url_params(dependant: Dependant) -> Iterator[tuple[str, str]]:
    """(where, name) of every path and query parameter of a route, its dependencies included."""
    yield from (("path", field.alias) for field in dependant.path_params)
    yield from (("query", field.alias) for field in dependant.query_params)
    for sub in dependant.dependencies:
        yield from url_params(sub)


def hidden_route_findings() -> tuple[int, int, list[str]]:
    """Routes left out of the schema (the link pages, `/metrics`) declare no parameter named
    like a credential at all: there is no schema to tell a database id apart here. Returns
    (routes, parameters scanned, findings)."""
    routes, scanned, findings = 0, 0, []
    for router in every_router():
        for route in router.routes:
            if not isinstance(route, APIRoute) or route.include_in_schema:
                continue
            routes += 1
            for where, name in url_params(route.dependant):
                scanned += 1
                if CREDENTIAL_NAME.search(name):
                    findings.append(f"{route.path}: {where} {name}")
    return routes, scanned, findings


def test_no_route_takes_a_credential_in_the_url_CHK_SE_09(make_settings) -> None:
    application = create_app(make_settings(metrics_enabled=True))
    scanned, findings = openapi_findings(application)
    hidden_routes, hidden_scanned, hidden_findings = hidden_route_findings()
    FIGURES.append(
        f"CHK-SE-09 URL scan: {scanned} OpenAPI path/query parameters and {hidden_routes} "
        f"routes outside the schema ({hidden_scanned} parameters) scanned: "
        f"{len(findings) + len(hidden_findings)} findings"
    )
    assert scanned > 0
    assert hidden_routes > 0
    assert findings == []
    assert hidden_findings == []


def test_no_code_reads_the_query_string_by_hand_CHK_SE_09() -> None:
    """Declared parameters are scanned above; the other way to read a URL is by hand
    (`request.query_params`, `url.query`, the ASGI `query_string`). authkeep never does."""
    src = Path(authkeep.__file__).parent
    found = []
    for path in sorted(src.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and node.attr in ("query_params", "query_string"):
                found.append(f"{path.relative_to(src)}:{node.lineno}")
            if (
                isinstance(node, ast.Attribute)
                and node.attr == "query"
                and isinstance(node.value, ast.Attribute)
                and node.value.attr == "url"
            ):
                found.append(f"{path.relative_to(src)}:{node.lineno}")
            if isinstance(node, ast.Constant) and node.value == "query_string":
                found.append(f"{path.relative_to(src)}:{node.lineno}")
    assert found == []


@contextmanager
def client_url_logging_off() -> Iterator[None]:
    """The test client logs every URL it is told to use, and these URLs carry a real token on
    purpose. Its logger is quieted; the server's own logs are still scanned for the token."""
    logger = logging.getLogger("httpx")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


SESSION_ROUTES = (
    ("GET", "/api/auth/session", None),
    ("GET", "/api/auth/sessions", None),
    ("GET", "/api/auth/mfa", None),
    ("GET", "/api/keys", None),
    ("GET", "/api/usage", None),
    ("GET", "/api/entitlements", None),
    ("POST", "/api/entitlements/check", {"feature": "api"}),
    ("POST", "/api/keys", {"name": "from the url"}),
)


async def test_a_session_token_in_the_query_string_authenticates_nothing_CHK_SE_09(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    _, _, token = await new_user(client)
    _, _, admin_token = await signed_in_admin(app, client)
    client.cookies.clear()
    routes = [*SESSION_ROUTES, ("GET", "/api/admin/users", None)]
    for method, path, body in routes:
        credential = admin_token if path.startswith("/api/admin") else token
        with client_url_logging_off():
            for name in QUERY_NAMES:
                response = await client.request(method, path, params={name: credential}, json=body)
                SCAN.record(f"{path}?{name}= refusal", response.text)
                assert response.status_code == 401, (path, name, response.text)
                assert credential not in response.text
        # The control: the same token, where it belongs, is a valid one.
        accepted = await client.request(method, path, json=body, headers=bearer(credential))
        assert accepted.status_code in (200, 201), (path, accepted.text)
        if path == "/api/keys" and method == "POST":
            SCAN.register(accepted.json()["key"])


@pytest.mark.parametrize("name", QUERY_NAMES)
async def test_an_api_key_in_the_query_string_is_not_read_by_entitlements_CHK_AK_02(
    app: FastAPI, client: httpx.AsyncClient, name: str
) -> None:
    """`POST /api/entitlements/check` accepts an API key (`plans.asker`); never from the URL."""
    _, _, token = await new_user(client)
    client.cookies.clear()
    key = (await create_key(client, token))["key"]
    with client_url_logging_off():
        response = await client.post(
            "/api/entitlements/check", params={name: key}, json={"feature": "api"}
        )
    SCAN.record("entitlements query-string refusal", response.text)
    assert response.status_code == 401
    assert key not in response.text
    header = await client.post(
        "/api/entitlements/check", json={"feature": "api"}, headers={"X-API-Key": key}
    )
    assert header.status_code == 200, header.text
