"""A real Caddy, configured by the generated Caddyfile, in front of a real `authkeep serve`."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from deploy_helpers import init, require_tool

from support.server import ServerProcess, free_port

SECURITY_HEADERS = {
    "strict-transport-security": "max-age=31536000; includeSubDomains",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}


@pytest.fixture
def authkeep_server(tmp_path: Path, sqlite_url: str) -> Iterator[ServerProcess]:
    # Metrics on: the proxy must keep /metrics from the outside even then.
    env = {"DATABASE_URL": sqlite_url, "AUTHKEEP_METRICS_ENABLED": "true"}
    with ServerProcess(tmp_path, env) as server:
        yield server


@pytest.fixture
def caddy_url(tmp_path: Path, authkeep_server: ServerProcess) -> Iterator[str]:
    """Caddy on a free loopback port with the systemd target's Caddyfile (upstream = the server).

    Only two things differ from production, both outside the site block under test: the site
    address is http:// on a free port (no certificates on loopback), and the admin endpoint is
    off so parallel runs never fight over :2019.
    """
    caddy = require_tool("caddy", "caddy")
    files = init("systemd", tmp_path / "deploy", "--port", str(authkeep_server.port))
    port = free_port()
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "XDG_DATA_HOME": str(tmp_path / "caddy-data"),
        "XDG_CONFIG_HOME": str(tmp_path / "caddy-config"),
        "DOMAIN": f"http://127.0.0.1:{port}",
    }
    adapted = subprocess.run(
        [caddy, "adapt", "--config", str(files / "Caddyfile"), "--adapter", "caddyfile"],
        capture_output=True, text=True, env=env, check=True, timeout=60,
    )  # fmt: skip
    config = json.loads(adapted.stdout)
    config["admin"] = {"disabled": True}
    for server in config["apps"]["http"]["servers"].values():
        server["automatic_https"] = {"disable": True}
    config_path = tmp_path / "caddy.json"
    config_path.write_text(json.dumps(config))
    log = (tmp_path / "caddy.log").open("wb")
    process = subprocess.Popen(
        [caddy, "run", "--config", str(config_path)], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, (tmp_path / "caddy.log").read_text()
            try:
                httpx.get(f"{url}/health", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, (tmp_path / "caddy.log").read_text()
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(10)
        log.close()


def assert_security_headers(response: httpx.Response) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, name
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert "server" not in response.headers


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/health", {"status": "ok"}),
        ("/health", {"status": "ok"}),
        ("/health/db", {"status": "ok", "database": "reachable"}),
        ("/api/health/db", {"status": "ok", "database": "reachable"}),
    ],
)
def test_health_passes_through_with_security_headers(
    caddy_url: str, path: str, body: dict[str, str]
) -> None:
    response = httpx.get(caddy_url + path)
    assert response.status_code == 200
    assert body.items() <= response.json().items()
    assert response.headers["cache-control"] == "no-store"  # authkeep's own header survives
    assert_security_headers(response)


def test_the_other_authkeep_paths_are_routed(caddy_url: str) -> None:
    jwks = httpx.get(f"{caddy_url}/.well-known/jwks.json")
    assert jwks.status_code == 200
    assert len(jwks.json()["keys"]) == 1
    assert jwks.headers["cache-control"] == "public, max-age=300"
    assert httpx.get(f"{caddy_url}/openapi.json").json()["info"]["title"] == "authkeep"
    assert "version" in httpx.get(f"{caddy_url}/api/version").json()
    docs = httpx.get(f"{caddy_url}/docs")
    assert docs.status_code == 200
    assert "https://cdn.jsdelivr.net" in docs.headers["content-security-policy"]
    assert_security_headers(docs)
    redoc = httpx.get(f"{caddy_url}/redoc")
    assert redoc.status_code == 200
    assert "https://fonts.googleapis.com" in redoc.headers["content-security-policy"]
    # The pages the emailed reset and verification links open, with authkeep's own nonce CSP.
    for page in ("/reset-password", "/verify-email"):
        opened = httpx.get(caddy_url + page)
        assert opened.status_code == 200, page
        assert opened.headers["content-type"].startswith("text/html")
        assert "script-src 'nonce-" in opened.headers["content-security-policy"]
        assert_security_headers(opened)
    # /api/* reaches authkeep even where authkeep has no route: its own JSON 404.
    missing = httpx.get(f"{caddy_url}/api/no-such-route")
    assert missing.status_code == 404
    assert missing.json()["error"] == "not_found"
    assert missing.json()["detail"] != "Nothing is served at this path."


@pytest.mark.parametrize("path", ["/secret-path", "/", "/healthz", "/administrator", "/.env"])
def test_other_paths_are_answered_by_caddy_not_routed_to_authkeep(
    caddy_url: str, path: str
) -> None:
    response = httpx.get(caddy_url + path)
    assert response.status_code == 404
    assert response.json() == {"error": "not_found", "detail": "Nothing is served at this path."}
    assert_security_headers(response)


def test_metrics_are_served_to_the_host_but_not_through_caddy_CHK_API_07(
    caddy_url: str, authkeep_server: ServerProcess
) -> None:
    """With AUTHKEEP_METRICS_ENABLED the server answers /metrics on its own port, and the
    generated Caddyfile never forwards it: the internet gets Caddy's 404."""
    direct = httpx.get(f"{authkeep_server.url}/metrics")
    assert direct.status_code == 200
    assert "authkeep_rate_limited_total" in direct.text
    for path in ("/metrics", "/metrics/", "/METRICS", "//metrics"):
        response = httpx.get(caddy_url + path)
        assert response.status_code == 404, path
        assert response.json() == {
            "error": "not_found",
            "detail": "Nothing is served at this path.",
        }


def test_site_address_is_domain_variable_else_the_rendered_domain(tmp_path: Path) -> None:
    caddy = require_tool("caddy", "caddy")
    files = init("systemd", tmp_path / "deploy", "--domain", "auth.pond.dev")
    base = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    for env, host in (
        ({}, "auth.pond.dev"),
        ({"DOMAIN": "other.example.org"}, "other.example.org"),
    ):
        adapted = subprocess.run(
            [caddy, "adapt", "--config", str(files / "Caddyfile"), "--adapter", "caddyfile"],
            capture_output=True, text=True, env={**base, **env}, check=True, timeout=60,
        )  # fmt: skip
        routes = json.loads(adapted.stdout)["apps"]["http"]["servers"]["srv0"]["routes"]
        assert routes[0]["match"] == [{"host": [host]}]
