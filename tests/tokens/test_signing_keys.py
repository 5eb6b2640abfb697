"""Signing keys: `kid` thumbprints, loading from settings, generation in standalone (0600, one
value under concurrency), production rules, and `authkeep keygen` (CHK-JWT-06)."""

from __future__ import annotations

import base64
import hashlib
import json
import multiprocessing
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from authkeep.app import create_app
from authkeep.config import load_settings
from authkeep.core.secrets import SECRETS_FILE, secret_for
from authkeep.errors import ConfigError
from authkeep.tokens.keys import KeySet, SigningKey, load_signing_key, thumbprint
from support.secrets_scan import SCAN
from support.server import ServerProcess


def pem_of(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, fmt: str = "pkcs8") -> str:
    private_format = (
        serialization.PrivateFormat.PKCS8
        if fmt == "pkcs8"
        else serialization.PrivateFormat.TraditionalOpenSSL
    )
    return key.private_bytes(
        serialization.Encoding.PEM, private_format, serialization.NoEncryption()
    ).decode()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# --- RFC 7638 thumbprint ------------------------------------------------------------------------


def test_kid_is_the_rfc7638_thumbprint_built_by_hand() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    numbers = key.public_key().public_numbers()
    x, y = b64(numbers.x.to_bytes(32, "big")), b64(numbers.y.to_bytes(32, "big"))
    canonical = f'{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}'
    expected = b64(hashlib.sha256(canonical.encode()).digest())
    assert thumbprint(key.public_key()) == expected
    assert SigningKey.of(key).kid == expected
    assert len(expected) == 43


def test_thumbprint_keeps_leading_zero_bytes_of_coordinates() -> None:
    """x must be exactly 32 bytes even when its first byte is 0 (RFC 7518 §6.2.1.2)."""
    scalar = 1
    while True:
        key = ec.derive_private_key(scalar, ec.SECP256R1())
        if key.public_key().public_numbers().x < 2**248:
            break
        scalar += 1
    jwk = SigningKey.of(key).public_jwk()
    assert len(base64.urlsafe_b64decode(jwk["x"] + "=")) == 32
    canonical = json.dumps(
        {k: jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"), sort_keys=True
    )
    assert jwk["kid"] == b64(hashlib.sha256(canonical.encode()).digest())


# --- loading keys -------------------------------------------------------------------------------


def test_pkcs8_sec1_and_one_line_forms_load_to_the_same_kid() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    kid = thumbprint(key.public_key())
    pkcs8 = pem_of(key)
    assert load_signing_key(pkcs8, "AUTHKEEP_JWT_KEY").kid == kid
    assert load_signing_key(pem_of(key, "sec1"), "AUTHKEEP_JWT_KEY").kid == kid
    one_line = pkcs8.strip().replace("\n", "\\n")
    assert "\n" not in one_line
    assert load_signing_key(one_line, "AUTHKEEP_JWT_KEY").kid == kid


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("not a key at all but a long secret-looking string 0123456789", "not an unencrypted"),
        (pem_of(ec.generate_private_key(ec.SECP384R1())), "secp384r1"),
        (pem_of(rsa.generate_private_key(public_exponent=65537, key_size=2048)), "RSA"),
    ],
    ids=["garbage", "p384", "rsa"],
)
def test_a_bad_key_is_a_config_error_naming_the_variable_not_the_value(
    make_settings, value: str, message: str
) -> None:
    SCAN.register(value)
    with pytest.raises(ConfigError) as caught:
        create_app(make_settings(env="production", secret_key="s" * 48, jwt_key=value))
    detail = SCAN.record("jwt-key-error", caught.value.detail)
    assert "AUTHKEEP_JWT_KEY" in detail
    assert message in detail
    assert value not in detail


def test_a_bad_next_key_names_its_own_variable(make_settings) -> None:
    settings = make_settings(
        jwt_next_key="-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----"
    )
    with pytest.raises(ConfigError, match="AUTHKEEP_JWT_NEXT_KEY"):
        KeySet.from_settings(settings)


def test_issuer_is_setting_then_public_url_then_authkeep(make_settings) -> None:
    assert KeySet.from_settings(make_settings()).issuer == "authkeep"
    url = make_settings(public_url="https://auth.example.com/")
    assert KeySet.from_settings(url).issuer == "https://auth.example.com"
    both = make_settings(public_url="https://auth.example.com", jwt_issuer="urn:ak")
    assert KeySet.from_settings(both).issuer == "urn:ak"


# --- standalone: generated into the data dir ----------------------------------------------------


def test_standalone_generates_the_key_into_the_data_dir_0600_and_keeps_it(make_settings) -> None:
    settings = make_settings()
    first = KeySet.from_settings(settings)
    path = settings.data_dir / SECRETS_FILE
    assert path.stat().st_mode & 0o777 == 0o600
    stored = json.loads(path.read_text())["jwt_key"]
    SCAN.register(stored)
    assert stored.startswith("-----BEGIN PRIVATE KEY-----")
    assert load_signing_key(stored, "x").kid == first.require_signing().kid
    again = KeySet.from_settings(make_settings())
    assert again.require_signing().kid == first.require_signing().kid
    assert [k["kid"] for k in again.jwks()["keys"]] == [first.require_signing().kid]


def test_configured_key_is_used_and_nothing_is_written(make_settings) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    settings = make_settings(jwt_key=pem_of(key))
    assert KeySet.from_settings(settings).require_signing().kid == thumbprint(key.public_key())
    assert not (settings.data_dir / SECRETS_FILE).exists()


def _read_key(data_dir: str, barrier: multiprocessing.synchronize.Barrier, queue) -> None:  # type: ignore[no-untyped-def]
    settings = load_settings(data_dir=Path(data_dir))
    barrier.wait()
    queue.put(secret_for(settings, "jwt_key").get_secret_value())


def test_processes_starting_together_agree_on_one_generated_key(tmp_path: Path) -> None:
    """`serve --workers N` on a first start: every worker must sign with the same key."""
    workers = 8
    ctx = multiprocessing.get_context("spawn")
    barrier, queue = ctx.Barrier(workers), ctx.Queue()
    processes = [
        ctx.Process(target=_read_key, args=(str(tmp_path / "data"), barrier, queue))
        for _ in range(workers)
    ]
    for process in processes:
        process.start()
    values = [queue.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(30)
        assert process.exitcode == 0
    for value in values:
        SCAN.register(value)
    assert len(set(values)) == 1
    assert json.loads((tmp_path / "data" / SECRETS_FILE).read_text())["jwt_key"] == values[0]


# --- production ---------------------------------------------------------------------------------


def test_production_without_key_generates_nothing_and_refuses_to_sign(make_settings) -> None:
    settings = make_settings(env="production", secret_key="s" * 48)
    keyset = KeySet.from_settings(settings)
    assert keyset.jwks() == {"keys": []}
    with pytest.raises(ConfigError) as caught:
        keyset.require_signing()
    assert "AUTHKEEP_JWT_KEY" in caught.value.detail
    assert "authkeep keygen" in caught.value.detail
    assert not (settings.data_dir / SECRETS_FILE).exists()


def test_production_server_starts_without_a_key_and_publishes_an_empty_jwks(
    tmp_path: Path, sqlite_url: str
) -> None:
    """Nothing signs yet in this release, so a missing key must not stop the server."""
    env = {
        "AUTHKEEP_ENV": "production",
        "AUTHKEEP_SECRET_KEY": "s" * 48,
        "DATABASE_URL": sqlite_url,
    }
    with ServerProcess(tmp_path, env) as server:
        response = httpx.get(f"{server.url}/.well-known/jwks.json")
    assert response.status_code == 200
    assert response.json() == {"keys": []}
    assert not (tmp_path / "data" / SECRETS_FILE).exists()


# --- authkeep keygen ----------------------------------------------------------------------------


def run_keygen(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "authkeep", "keygen", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def test_keygen_prints_private_key_on_stdout_and_public_key_with_kid_on_stderr(
    make_settings,
) -> None:
    result = run_keygen()
    private_pem = SCAN.register(result.stdout.strip())
    SCAN.record("keygen stderr", result.stderr)
    assert private_pem.startswith("-----BEGIN PRIVATE KEY-----")  # PKCS8
    assert private_pem.endswith("-----END PRIVATE KEY-----")
    assert "PUBLIC KEY" not in result.stdout
    key = serialization.load_pem_private_key(private_pem.encode(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)
    kid = thumbprint(key.public_key())
    assert f"kid: {kid}" in result.stderr
    assert "-----BEGIN PUBLIC KEY-----" in result.stderr
    assert "PRIVATE" not in result.stderr
    # What `fly secrets set AUTHKEEP_JWT_KEY="$(authkeep keygen)"` stores is what the server uses.
    settings = make_settings(env="production", secret_key="s" * 48, jwt_key=result.stdout)
    assert KeySet.from_settings(settings).require_signing().kid == kid


def test_keygen_one_line_form_is_a_single_line_that_loads() -> None:
    result = run_keygen("--one-line")
    line = SCAN.register(result.stdout.strip())
    assert "\n" not in line
    assert line.startswith("-----BEGIN PRIVATE KEY-----\\n")
    kid = result.stderr.split("kid: ")[1].split()[0]
    assert load_signing_key(line, "AUTHKEEP_JWT_KEY").kid == kid


def test_keygen_makes_a_new_key_each_time() -> None:
    first, second = run_keygen(), run_keygen()
    SCAN.register(first.stdout.strip())
    SCAN.register(second.stdout.strip())
    assert first.stdout != second.stdout
