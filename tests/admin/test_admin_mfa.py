"""Admin MFA (RELIABILITY CHK-AC-06): with `AUTHKEEP_ADMIN_MFA_REQUIRED`, every admin route —
found in `app.routes` by the `admin_principal` dependency, not from a hand list — refuses an
admin whose account has no MFA with 403 `admin_mfa_required` and one audit row per refusal,
and so do the two routes where an admin reads another user's data (usage, entitlements).
The admin's own user routes still work, so the admin can enrol MFA; turning MFA on ends the
admin's other sessions (none of them passed a second step); after a TOTP sign-in every admin
route lets the admin in. With the setting off nothing changes. `authkeep doctor` warns in
production while the setting is off. Both engines, through the real API."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import httpx
import time_machine
from admin_helpers import invoke, json_out, new_user, sign_in, signed_in_admin
from fastapi import FastAPI
from fastapi.routing import APIRoute
from identity_helpers import audit_rows, bearer, client_for, started_app, user_row
from mfa_helpers import START, STEP, CodeWatch, challenge, confirm, enrol, sign_in_mfa, totp
from starlette.routing import BaseRoute

from authkeep.users.admin_routes import admin_principal
from support.secrets_scan import SCAN

PATH_PARAM = re.compile(r"\{(\w+)\}")
# An id of no existing object, for path parameters other than the target user.
MISSING_ID = uuid.UUID(int=1)
REFUSALS = {"unauthorized", "forbidden", "admin_mfa_required", "reauth_required"}
NOT_FOUND = {"unknown_plan", "unknown_subscription", "key_not_found"}


@dataclass(frozen=True, order=True)
class GatedRoute:
    method: str
    path: str
    takes_body: bool

    @property
    def needs_only_the_user(self) -> bool:
        """No body and no id but the target user's: an admin who gets in gets a 2xx."""
        return not self.takes_body and set(PATH_PARAM.findall(self.path)) <= {"user_id"}


def _api_routes(routes: Iterable[BaseRoute]) -> Iterator[APIRoute]:
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        # FastAPI keeps an included router as one entry that holds the router itself.
        elif (included := getattr(route, "original_router", None)) is not None:
            yield from _api_routes(included.routes)


def _depends_on(route: APIRoute, call: object) -> bool:
    pending = list(route.dependant.dependencies)
    while pending:
        dependency = pending.pop()
        if dependency.call is call:
            return True
        pending.extend(dependency.dependencies)
    return False


def admin_gated_routes(app: FastAPI) -> list[GatedRoute]:
    """Every route whose dependencies include `admin_principal` (directly, or through
    `Admin` / `FreshAdmin`)."""
    return sorted(
        GatedRoute(method, route.path, bool(route.dependant.body_params))
        for route in _api_routes(app.routes)
        if _depends_on(route, admin_principal)
        for method in route.methods
    )


def concrete(route: GatedRoute, target: uuid.UUID) -> str:
    """The route's path with the target user's id, and `MISSING_ID` for any other id."""
    return PATH_PARAM.sub(
        lambda match: str(target if match[1] == "user_id" else MISSING_ID), route.path
    )


async def call(
    client: httpx.AsyncClient, route: GatedRoute, target: uuid.UUID, token: str
) -> httpx.Response:
    response = await client.request(route.method, concrete(route, target), headers=bearer(token))
    SCAN.record(f"{route.method} {route.path}", response.text)
    return response


def error_code(response: httpx.Response) -> str:
    if not response.content or "json" not in response.headers.get("content-type", ""):
        return ""
    body = response.json()
    return str(body.get("error", "")) if isinstance(body, dict) else ""


async def mfa_refusals(app: FastAPI) -> list[tuple[str, str]]:
    rows = await audit_rows(app, "admin.access")
    return [
        (row.detail["method"], row.detail["path"])
        for row in rows
        if row.outcome == "denied" and row.detail["reason"] == "mfa_required"
    ]


async def others_data(
    client: httpx.AsyncClient, target: uuid.UUID, token: str
) -> tuple[httpx.Response, httpx.Response]:
    """The admin powers outside `/api/admin`: another user's usage and entitlements."""
    usage = await client.get(f"/api/usage?user_id={target}", headers=bearer(token))
    check = await client.post(
        "/api/entitlements/check",
        json={"feature": "export", "user_id": str(target)},
        headers=bearer(token),
    )
    return usage, check


def test_the_inventory_is_every_admin_api_route(app: FastAPI):
    """The dependency walk finds exactly the operations the OpenAPI document lists under
    `/api/admin`, but the setup endpoint (a setup token authorises it, not a session)."""
    found = {(r.method, r.path) for r in admin_gated_routes(app)}
    documented = {
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        if path.startswith("/api/admin")
        for method in operations
    }
    assert found == documented - {("POST", "/api/admin/setup")}
    assert len(found) >= 20


async def test_admin_without_mfa_is_refused_everywhere_until_mfa_CHK_AC_06(
    migrated_url: str, make_settings
):
    watch = CodeWatch()
    async with (
        started_app(make_settings, migrated_url, admin_mfa_required=True) as app,
        client_for(app) as client,
    ):
        inventory = admin_gated_routes(app)
        with time_machine.travel(START, tick=False) as traveller:
            target_email, _, _ = await new_user(client)
            target = (await user_row(app, target_email)).id
            email, password, token = await signed_in_admin(app, client)
            laptop = (await sign_in(client, email, password)).json()["token"]
            client.cookies.clear()

            for route in inventory:
                response = await call(client, route, target, token)
                assert response.status_code == 403, (route, response.text)
                assert error_code(response) == "admin_mfa_required", route
            usage, check = await others_data(client, target, token)
            assert [(r.status_code, error_code(r)) for r in (usage, check)] == [
                (403, "admin_mfa_required")
            ] * 2
            refused = await mfa_refusals(app)
            assert len(refused) == len(inventory) + 2
            assert sorted(refused[: len(inventory)]) == sorted(
                (r.method, concrete(r, target)) for r in inventory
            )

            # Not admin powers: the admin's own account, usage and entitlements.
            assert (await client.get("/api/auth/mfa", headers=bearer(token))).status_code == 200
            assert (await client.get("/api/usage", headers=bearer(token))).status_code == 200
            own = await client.post(
                "/api/entitlements/check", json={"feature": "export"}, headers=bearer(token)
            )
            assert own.status_code == 200, own.text

            enrolled = await enrol(client, token)
            assert enrolled.status_code == 201, enrolled.text
            secret = enrolled.json()["secret"]
            confirmed = await confirm(client, token, watch.add(totp(secret).now()))
            assert confirmed.status_code == 200, confirmed.text
            ended = await client.get("/api/auth/session", headers=bearer(laptop))
            assert ended.status_code == 401
            confirm_rows = await audit_rows(app, "auth.mfa.confirm")
            assert [r.detail for r in confirm_rows] == [{"sessions_ended": 1}]

            traveller.shift(STEP)
            mfa_token = await challenge(client, email, password)
            signed = await sign_in_mfa(client, mfa_token, watch.add(totp(secret).now()))
            assert signed.status_code == 200, signed.text
            mfa_admin = signed.json()["token"]
            client.cookies.clear()
            for route in inventory:
                response = await call(client, route, target, mfa_admin)
                assert error_code(response) not in REFUSALS, (route, response.text)
                if route.needs_only_the_user:
                    assert 200 <= response.status_code < 300, (route, response.text)
                else:  # the route ran: no such plan, key or subscription, or no body
                    assert error_code(response) in {"validation_error", *NOT_FOUND}, route
            assert [r.status_code for r in await others_data(client, target, mfa_admin)] == [
                200,
                200,
            ]
            assert len(await mfa_refusals(app)) == len(inventory) + 2

            # Checked on every request: with MFA off again the admin powers are gone at once.
            traveller.shift(STEP)
            turned_off = await client.post(
                "/api/auth/mfa/totp/disable",
                json={"password": password, "code": watch.add(totp(secret).now())},
                headers=bearer(mfa_admin),
            )
            assert turned_off.status_code == 200, turned_off.text
            again = await client.get("/api/admin/users", headers=bearer(mfa_admin))
            assert (again.status_code, error_code(again)) == (403, "admin_mfa_required")
    assert watch.leaks() == []


async def test_with_the_setting_off_an_admin_without_mfa_gets_in(
    app: FastAPI, client: httpx.AsyncClient
):
    """The default: no route of the inventory refuses an admin for lacking MFA, nothing is
    audited as `mfa_required`, and another user's usage and entitlements answer 200."""
    assert app.state.settings.admin_mfa_required is False
    target_email, _, _ = await new_user(client)
    target = (await user_row(app, target_email)).id
    _, _, token = await signed_in_admin(app, client)
    for route in admin_gated_routes(app):
        response = await call(client, route, target, token)
        assert error_code(response) not in REFUSALS, (route, response.text)
        if route.needs_only_the_user:
            assert 200 <= response.status_code < 300, (route, response.text)
        else:
            assert error_code(response) in {"validation_error", *NOT_FOUND}, route
    assert [r.status_code for r in await others_data(client, target, token)] == [200, 200]
    assert await audit_rows(app, "admin.access") == []


def doctor_item(env: dict[str, str]) -> dict[str, str]:
    result = invoke("doctor", "--json", env=env)
    items = {item["name"]: item for item in json_out(result)["items"]}
    return dict(items["admin MFA"])


def test_doctor_warns_in_production_while_admin_mfa_is_not_required(tmp_path):
    secret = SCAN.register("doctor-admin-mfa-secret-" + "y" * 40)
    base = {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'doctor.db'}",
        "AUTHKEEP_SECRET_KEY": secret,
    }
    production = {**base, "AUTHKEEP_ENV": "production"}
    off = doctor_item(production)
    assert off["status"] == "warn"
    assert "AUTHKEEP_ADMIN_MFA_REQUIRED=true" in off["fix"]
    on = doctor_item({**production, "AUTHKEEP_ADMIN_MFA_REQUIRED": "true"})
    assert on["status"] == "pass"
    assert doctor_item(base)["status"] == "pass"
