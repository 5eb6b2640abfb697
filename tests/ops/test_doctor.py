"""`authkeep doctor`: the seed 002 production checklist, each item with its fix.

CLI tests are synchronous: the command runs its own event loop, as it does for a user.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from typer.testing import CliRunner, Result

from authkeep.cli import app
from support.apps import migrate_url
from support.secrets_scan import SCAN

runner = CliRunner()


def doctor(env: dict[str, str]) -> tuple[Result, dict[str, dict[str, str]]]:
    result = runner.invoke(app, ["doctor", "--json"], env=env)
    SCAN.record("cli:doctor", result.output)
    items = {item["name"]: item for item in json.loads(result.stdout)["items"]}
    return result, items


def test_development_sqlite_is_usable_with_warnings_only(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'dev.db'}"
    asyncio.run(migrate_url(url))
    secret = SCAN.register("doctor-dev-secret-" + "x" * 40)
    result, items = doctor({"DATABASE_URL": url, "AUTHKEEP_SECRET_KEY": secret})
    assert result.exit_code == 0, result.output
    assert items["production mode"]["status"] == "warn"
    assert items["schema at head"]["status"] == "pass"
    assert items["verified backup"]["status"] == "warn"
    assert {i["status"] for i in items.values()} <= {"pass", "warn"}


def test_production_checklist_fails_each_insecure_setting_with_its_fix(
    postgres_url: str,
):
    asyncio.run(migrate_url(postgres_url))
    env = {
        "AUTHKEEP_ENV": "production",
        "DATABASE_URL": postgres_url,
        "AUTHKEEP_STRICT_DB_BOOTSTRAP": "0",
        "AUTHKEEP_TRUSTED_PROXIES": "0.0.0.0/0",
        "TRUSTED_ORIGINS": "*",
    }
    result, items = doctor(env)
    assert result.exit_code == 1
    expected_failures = {
        "secret AUTHKEEP_SECRET_KEY": "AUTHKEEP_SECRET_KEY",
        "strict database bootstrap": "AUTHKEEP_STRICT_DB_BOOTSTRAP",
        "trusted proxies": "AUTHKEEP_TRUSTED_PROXIES",
        "trusted origins": "https://",
        "app database role": "authkeep db roles",
        "verified backup": "authkeep db backup --verify",
    }
    for name, fix in expected_failures.items():
        assert items[name]["status"] == "fail", name
        assert fix in items[name]["fix"], name
    assert items["schema at head"]["status"] == "pass"
    assert items["database network"]["status"] == "pass"


def test_unreachable_database_fails_the_checklist(closed_port: int):
    env = {"DATABASE_URL": f"postgresql://app:pw@127.0.0.1:{closed_port}/app"}
    result, items = doctor(env)
    assert result.exit_code == 1
    assert items["database reachable"]["status"] == "fail"
    assert "start PostgreSQL" in items["database reachable"]["detail"]
