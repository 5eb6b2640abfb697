"""compose.yml (YAML-parsed), its Caddyfile (`caddy validate`) and the app-role init script,
which is run against a real PostgreSQL with a hostile password."""

from __future__ import annotations

import re
import secrets
import subprocess
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml
from deploy_helpers import init, require_tool

from support.pgcluster import ThrowawayPostgres
from support.secrets_scan import SCAN

REQUIRED = (
    "POSTGRES_PASSWORD",
    "POSTGRES_APP_PASSWORD",
    "AUTHKEEP_SECRET_KEY",
    "AUTHKEEP_JWT_KEY",
    "DOMAIN",
)


@pytest.fixture(scope="module")
def compose_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init("compose", tmp_path_factory.mktemp("compose"))


@pytest.fixture(scope="module")
def compose(compose_dir: Path) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((compose_dir / "compose.yml").read_text())
    return document


def service_env(compose: dict[str, Any], name: str) -> dict[str, str]:
    env: dict[str, str] = compose["services"][name]["environment"]
    return env


def test_caddy_is_the_only_service_publishing_ports_and_only_80_443(
    compose: dict[str, Any],
) -> None:
    published = {name: svc["ports"] for name, svc in compose["services"].items() if "ports" in svc}
    assert list(published) == ["caddy"]
    for mapping in published["caddy"]:
        host, container = str(mapping).split("/")[0].split(":")[-2:]
        assert host == container
        assert host in {"80", "443"}
    for name, svc in compose["services"].items():
        assert "expose" not in svc or name == "caddy"
        assert svc.get("network_mode") != "host", name


def test_server_has_the_app_dsn_and_never_the_admin_dsn(compose: dict[str, Any]) -> None:
    server = service_env(compose, "authkeep")
    assert "DATABASE_URL_ADMIN" not in server
    assert "POSTGRES_PASSWORD" not in " ".join(server.values())
    assert "${POSTGRES_APP_USER" in server["DATABASE_URL"]
    assert "${POSTGRES_APP_PASSWORD" in server["DATABASE_URL"]
    assert server["AUTHKEEP_ENV"] == "production"
    migrate = compose["services"]["migrate"]
    assert migrate["command"] == ["authkeep", "db", "migrate"]
    assert "${POSTGRES_PASSWORD" in service_env(compose, "migrate")["DATABASE_URL_ADMIN"]
    assert "DATABASE_URL" not in service_env(compose, "migrate")
    assert (
        service_env(compose, "migrate")["AUTHKEEP_DB_APP_ROLE"]
        == "${POSTGRES_APP_USER:-authkeep_app}"
    )


def test_start_order_db_healthy_then_migrate_then_server(compose: dict[str, Any]) -> None:
    services = compose["services"]
    db = services["db"]
    assert db["image"].startswith("postgres:16")
    test = " ".join(db["healthcheck"]["test"])
    assert "pg_isready" in test
    assert services["migrate"]["depends_on"]["db"]["condition"] == "service_healthy"
    server_deps = services["authkeep"]["depends_on"]
    assert server_deps["migrate"]["condition"] == "service_completed_successfully"
    assert server_deps["db"]["condition"] == "service_healthy"
    assert services["migrate"]["restart"] == "no"
    assert "./db/init:/docker-entrypoint-initdb.d:ro" in db["volumes"]
    # Both app services use the same image built from this checkout.
    assert services["migrate"]["image"] == services["authkeep"]["image"]
    assert services["migrate"]["build"] == services["authkeep"]["build"] == "."


def test_required_secrets_fail_fast_when_missing(
    compose_dir: Path, compose: dict[str, Any]
) -> None:
    text = (compose_dir / "compose.yml").read_text()
    guarded = set(re.findall(r"\$\{([A-Z_]+):\?[^}]+\}", text))
    assert set(REQUIRED) <= guarded
    # Every use of a required variable is guarded, not only the first.
    for name in REQUIRED:
        assert not re.search(rf"\$\{{{name}(:-[^}}]*)?\}}", text), name
    example = (compose_dir / ".env.example").read_text()
    for name in REQUIRED:
        assert re.search(rf"^{name}=", example, re.M), name
    for name in REQUIRED[:-1]:
        assert re.search(rf"^{name}=$", example, re.M), f"{name} must be left empty"


def test_database_network_has_no_route_out(compose: dict[str, Any]) -> None:
    assert compose["networks"]["backend"]["internal"] is True
    assert compose["services"]["db"]["networks"] == ["backend"]
    assert compose["services"]["caddy"]["networks"] == ["frontend"]
    subnet = compose["networks"]["frontend"]["ipam"]["config"][0]["subnet"]
    assert service_env(compose, "authkeep")["AUTHKEEP_TRUSTED_PROXIES"] == subnet


def test_compose_caddyfile_validates_with_real_caddy(compose_dir: Path, tmp_path: Path) -> None:
    caddy = require_tool("caddy", "caddy")
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "DOMAIN": "auth.example.com",
    }
    done = subprocess.run(
        [caddy, "validate", "--config", str(compose_dir / "Caddyfile"), "--adapter", "caddyfile"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Valid configuration" in done.stdout + done.stderr
    fmt = subprocess.run(
        [caddy, "fmt", str(compose_dir / "Caddyfile")], capture_output=True, text=True, env=env
    )
    assert fmt.stdout == (compose_dir / "Caddyfile").read_text()


# --- db/init/01-create-app-role.sh ---------------------------------------------------------------


def test_init_script_is_valid_bash(compose_dir: Path) -> None:
    bash = require_tool("bash", "bash")
    subprocess.run([bash, "-n", str(compose_dir / "db/init/01-create-app-role.sh")], check=True)


def run_init(
    script: Path, cluster: ThrowawayPostgres, database: str, user: str, password: str
) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": f"{cluster.bin_dir}:/usr/bin:/bin",
        "PGHOST": str(cluster.socket_dir),
        "PGPORT": str(cluster.port),
        "POSTGRES_USER": "postgres",
        "POSTGRES_DB": database,
        "POSTGRES_APP_USER": user,
        "POSTGRES_APP_PASSWORD": password,
    }
    done = subprocess.run(
        ["bash", str(script)], env=env, capture_output=True, text=True, timeout=60
    )
    SCAN.record("init-script", done.stdout + done.stderr)
    return done


async def test_init_script_creates_a_limited_role_with_a_hostile_password(
    compose_dir: Path, pg_cluster: ThrowawayPostgres, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    password = SCAN.register(f"p'a\"ss\\ w;o$(touch {marker})`id` %s :'x' @/%:ü -- ")
    role = f'ak app-"{secrets.token_hex(3)}"'
    database = f"ak_init_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(pg_cluster.admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{database}"')
    finally:
        await admin.close()
    script = compose_dir / "db/init/01-create-app-role.sh"
    done = run_init(script, pg_cluster, database, role, password)
    assert done.returncode == 0, done.stderr
    assert "is ready" in done.stdout
    assert not marker.exists()

    owner = await asyncpg.connect(pg_cluster.admin_url.rsplit("/", 1)[0] + f"/{database}")
    app = None
    try:
        attributes = await owner.fetchrow(
            "SELECT rolsuper, rolcreatedb, rolcreaterole, rolbypassrls, rolcanlogin "
            "FROM pg_roles WHERE rolname = $1", role,
        )  # fmt: skip
        assert tuple(attributes) == (False, False, False, False, True)
        # A table the migrations create later (as the owner) is usable by the app role.
        await owner.execute("CREATE TABLE later (id serial PRIMARY KEY, v text)")
        app = await asyncpg.connect(
            host=pg_cluster.host, port=pg_cluster.port, user=role, password=password,
            database=database,
        )  # fmt: skip
        assert await app.fetchval("SELECT current_user") == role
        await app.execute("INSERT INTO later (v) VALUES ('row')")
        assert await app.fetchval("SELECT count(*) FROM later") == 1
        for ddl in (
            "CREATE TABLE mine (id int)",
            "DROP TABLE later",
            "TRUNCATE later",
            "ALTER TABLE later ADD COLUMN x int",
            "CREATE INDEX ON later (v)",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await app.execute(ddl)
    finally:
        if app is not None:
            await app.close()
        await owner.close()

    # Running it again is safe, and updates the password.
    new_password = SCAN.register("second 'run' password \\ $HOME")
    again = run_init(script, pg_cluster, database, role, new_password)
    assert again.returncode == 0, again.stderr
    conn = await asyncpg.connect(
        host=pg_cluster.host,
        port=pg_cluster.port,
        user=role,
        password=new_password,
        database=database,
    )
    await conn.close()
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(
            host=pg_cluster.host,
            port=pg_cluster.port,
            user=role,
            password=password,
            database=database,
        )


def test_init_script_refuses_to_run_without_the_app_password(
    compose_dir: Path, pg_cluster: ThrowawayPostgres
) -> None:
    done = run_init(compose_dir / "db/init/01-create-app-role.sh", pg_cluster, "postgres", "x", "")
    assert done.returncode != 0
    assert "POSTGRES_APP_PASSWORD" in done.stderr
