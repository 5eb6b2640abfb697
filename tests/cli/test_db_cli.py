"""`authkeep db …`, `init-auth-db` and `config show`, run as a user runs them."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner, Result

from authkeep.cli import app
from support.pgcluster import ThrowawayPostgres
from support.secrets_scan import SCAN

runner = CliRunner()


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    result = runner.invoke(app, list(args), env=env)
    SCAN.record(f"cli:{' '.join(args)}", result.output)
    return result


def at_port(cluster: ThrowawayPostgres, port: int, **kw: str) -> str:
    return cluster.url(kw.get("database"), password=kw.get("password")).replace(
        f":{cluster.port}/", f":{port}/"
    )


@pytest.mark.parametrize("command", [("db", "migrate"), ("init-auth-db",)])
def test_migrate_is_idempotent_and_says_when_nothing_ran(database_url: str, command):
    env = {"DATABASE_URL": database_url}
    first = invoke(*command, env=env)
    assert first.exit_code == 0, first.output
    assert "Migrated" in first.output
    assert "all expected tables present" in first.output
    second = invoke(*command, "--json", env=env)
    assert second.exit_code == 0
    assert json.loads(second.stdout)["changed"] is False
    assert "Nothing to do" in invoke(*command, env=env).output


def test_migrate_uses_the_admin_dsn_when_set(pg_cluster, postgres_url: str, closed_port: int):
    env = {"DATABASE_URL": at_port(pg_cluster, closed_port), "DATABASE_URL_ADMIN": postgres_url}
    result = invoke("db", "migrate", "--json", env=env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["changed"] is True


def test_migrate_fails_loudly_when_no_database_answers(pg_cluster, closed_port: int):
    result = invoke(
        "db", "migrate", "--json", env={"DATABASE_URL": at_port(pg_cluster, closed_port)}
    )
    assert result.exit_code == 1
    body = json.loads(result.stdout)
    assert body["ok"] is False
    assert body["error"] == "database_bootstrap_failed"
    assert "connection refused" in body["detail"]
    assert "start PostgreSQL" in body["detail"]


def test_status_shows_current_and_head(database_url: str):
    env = {"DATABASE_URL": database_url}
    behind = invoke("db", "status", "--json", env=env)
    assert behind.exit_code == 1
    assert json.loads(behind.stdout)["current"] is None
    invoke("db", "migrate", env=env)
    at_head = invoke("db", "status", "--json", env=env)
    assert at_head.exit_code == 0
    state = json.loads(at_head.stdout)
    assert state["current"] == state["head"]


def test_check_reports_a_usable_database(postgres_url: str):
    env = {"DATABASE_URL": postgres_url}
    invoke("db", "migrate", env=env)
    result = invoke("db", "check", "--json", env=env)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert report["selected"]["source"] == "DATABASE_URL"
    assert report["selected"]["server_version"]
    assert report["selected"]["tls"] is False
    assert report["schema"]["at_head"] is True
    assert "DATABASE_URL is the primary" in report["precedence"]


def _check_problem(env: dict[str, str]) -> tuple[Result, dict]:  # type: ignore[type-arg]
    result = invoke("db", "check", "--json", env={**env, "AUTHKEEP_DB_PROBE_TIMEOUT": "0.5"})
    return result, json.loads(result.stdout)


def test_check_names_each_failure_kind_with_its_fix(pg_cluster, closed_port, blackhole_port):
    cases = {
        "refused": (at_port(pg_cluster, closed_port), "start PostgreSQL"),
        "timeout": (at_port(pg_cluster, blackhole_port), "AUTHKEEP_DB_PROBE_TIMEOUT"),
        "auth_failed": (pg_cluster.url(password="wrong"), "check the user and password"),
        "database_missing": (pg_cluster.url("gone"), "createdb"),
    }
    for kind, (url, fix) in cases.items():
        result, report = _check_problem({"DATABASE_URL": url})
        assert result.exit_code == 1, kind
        [problem] = report["problems"]
        assert problem["kind"] == kind
        assert fix in problem["fix"]
        text = invoke(
            "db", "check", env={"DATABASE_URL": url, "AUTHKEEP_DB_PROBE_TIMEOUT": "0.5"}
        ).output
        assert fix in text.replace("\n", " ")


def test_check_names_a_schema_behind_head(postgres_url: str):
    result, report = _check_problem({"DATABASE_URL": postgres_url})
    assert result.exit_code == 1
    assert [p["kind"] for p in report["problems"]] == ["schema_behind"]
    assert "authkeep db migrate" in report["problems"][0]["fix"]


def test_check_explains_why_auth_database_uri_won(postgres_url: str, pg_cluster, closed_port):
    env = {"AUTH_DATABASE_URI": postgres_url, "DATABASE_URL": at_port(pg_cluster, closed_port)}
    _, report = _check_problem(env)
    assert "AUTH_DATABASE_URI is set" in report["precedence"]
    assert [c["source"] for c in report["candidates"]] == ["AUTH_DATABASE_URI"]


def test_config_show_masks_every_secret(pg_cluster):
    secret = SCAN.register("config-show-secret-value-0123456789-abcdef")
    env = {
        "DATABASE_URL": pg_cluster.url(),
        "AUTHKEEP_SECRET_KEY": secret,
        "AUTHKEEP_SMTP_PASSWORD": SCAN.register("smtp-pass-zz9"),
        "AUTHKEEP_ENV": "production",
    }
    for args in (("config", "show"), ("config", "show", "--json")):
        result = invoke(*args, env=env)
        assert result.exit_code == 0, result.output
        assert secret not in result.output
        assert pg_cluster.password not in result.output
        assert "smtp-pass-zz9" not in result.output
        assert "********" in result.output
    shown = json.loads(invoke("config", "show", "--json", env=env).stdout)
    assert shown["database_url"].startswith(f"postgresql://127.0.0.1:{pg_cluster.port}/")
    assert shown["effective.production"] is True
    assert shown["effective.bind_host"] == "0.0.0.0"


def test_invalid_setting_is_named_without_echoing_it():
    result = invoke("config", "show", "--json", env={"AUTHKEEP_PORT": "eighty"})
    assert result.exit_code == 1
    body = json.loads(result.stdout)
    assert body["error"] == "config_error"
    assert "AUTHKEEP_PORT" in body["detail"]
    assert "eighty" not in body["detail"]
