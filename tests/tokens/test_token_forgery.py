"""BI-04 forgery corpus against `verify` and over HTTP (CHK-JWT-01, -02, -07)."""

from __future__ import annotations

import sys
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import time_machine
from fastapi import Body, FastAPI
from forgery_corpus import AUDIENCE, ISSUER, TYP, Case, build_corpus, our_key, valid_token
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from authkeep.errors import install_error_handlers
from authkeep.tokens import service
from authkeep.tokens.keys import KeySet
from authkeep.tokens.service import InvalidToken, verify
from support.secrets_scan import FIGURES

NOW = 1_800_000_000


@pytest.fixture(scope="module")
def keyset() -> KeySet:
    return KeySet.of(ISSUER, our_key())


@pytest.fixture(scope="module")
def corpus() -> list[Case]:
    return build_corpus(our_key(), NOW)


@pytest.fixture
def at_now() -> Iterator[None]:
    with time_machine.travel(NOW, tick=False):
        yield


def test_control_token_is_accepted(keyset: KeySet, at_now: None) -> None:
    """Without this, a corpus that 'all fails' could be failing for the wrong reason."""
    claims = verify(keyset, valid_token(our_key(), NOW), AUDIENCE, TYP)
    assert claims.subject == "user-42"
    assert claims.issuer == ISSUER


def test_corpus_covers_every_bi04_category(corpus: list[Case]) -> None:
    names = " | ".join(case.name for case in corpus)
    for needle in (
        "alg=none", "alg=None", "HS256 keyed with our public key (PEM)",
        "HS256 keyed with our public key (JWK)", "RS256", "PS256", "EdDSA", "kid='../",
        "DROP TABLE", "jku header", "x5u header", "jwk header carrying the signing key",
        "x5c header", "r = s = 0", "DER-encoded", "63-byte", "65-byte", "P-384 key, ES384",
        "P-384 key, ES256", "expired", "nbf in the future", "wrong aud", "wrong iss",
        "typ='JWT'", "duplicate alg in header", "duplicate aud in payload",
        "padding on every segment", "space inside", "nested JWS", "1 MiB token",
    ):  # fmt: skip
        assert needle in names, needle
    assert len(corpus) >= 150


def test_every_forgery_is_rejected_with_invalid_token_only(
    keyset: KeySet, corpus: list[Case], at_now: None
) -> None:
    """CHK-JWT-01/02/07, BI-04: accepted = 0, exceptions other than InvalidToken = 0."""
    accepted: list[str] = []
    other: list[str] = []
    reasons: Counter[str] = Counter()
    for case in corpus:
        try:
            verify(keyset, case.token, AUDIENCE, TYP)
        except InvalidToken as exc:
            reasons[exc.reason] += 1
        except Exception as exc:
            other.append(f"{case.name}: {type(exc).__name__}")
        else:
            accepted.append(case.name)
    FIGURES.append(
        f"BI-04 JWT forgery corpus: {len(corpus)} cases, accepted {len(accepted)}, "
        f"other exceptions {len(other)}; reasons {dict(sorted(reasons.items()))}"
    )
    assert accepted == []
    assert other == []


def test_each_category_fails_at_the_intended_check(
    keyset: KeySet, corpus: list[Case], at_now: None
) -> None:
    """The right gate stops each attack (not, say, everything failing as malformed)."""
    by_name = {case.name: case for case in corpus}
    expected = {
        "alg=none, signature copied": "algorithm",
        "alg=None, empty signature": "malformed",
        "HS256 keyed with our public key (PEM)": "algorithm",
        "RS256 signed by an attacker RSA key": "algorithm",
        "EdDSA signed by an attacker Ed25519 key": "algorithm",
        "kid='../../../../../../etc/passwd' signed by an attacker key": "unknown_kid",
        'kid="x\'; DROP TABLE users; --" signed by an attacker key': "unknown_kid",
        "our kid, attacker signature": "bad_signature",
        "jwk header carrying the signing key, no kid": "header_parameters",
        "jku header on a token we signed": "header_parameters",
        "r = s = 0 (psychic signature)": "signature_encoding",
        "DER-encoded signature": "signature_encoding",
        "63-byte signature": "signature_encoding",
        "65-byte signature": "signature_encoding",
        "P-384 key, ES256 header, our kid": "signature_encoding",
        "expired beyond the leeway": "expired",
        "nbf in the future": "not_yet_valid",
        "wrong aud": "wrong_audience",
        "aud as a list with ours and another": "wrong_audience",
        "wrong iss": "wrong_issuer",
        "typ='JWT'": "wrong_type",
        "duplicate alg in header": "duplicate_member",
        "duplicate aud in payload": "duplicate_member",
        "non-canonical last character": "malformed",
        "1 MiB token (otherwise valid shape)": "malformed",
        "sub as a number": "claim_types",
        "exp as a float": "claim_types",
        "exp as true": "expired",
        "no exp": "missing_claim",
        "no aud": "missing_claim",
    }
    for name, reason in expected.items():
        with pytest.raises(InvalidToken) as caught:
            verify(keyset, by_name[name].token, AUDIENCE, TYP)
        assert caught.value.reason == reason, name


# --- CHK-JWT-02: a kid never reaches the file system, a database or the network ----------------

_WATCHED = (
    "open",
    "os.listdir",
    "os.scandir",
    "sqlite3.connect",
    "socket.connect",
    "subprocess.Popen",
)
_events: list[str] = []
_watching: dict[str, int | None] = {"thread": None}


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _watching["thread"] == threading.get_ident() and event in _WATCHED:
        _events.append(f"{event} {args[0]!r}")


@contextmanager
def io_spy() -> Iterator[list[str]]:
    """Record file, database, network and process events of this thread (PEP 578 audit hook)."""
    if not getattr(sys, "_authkeep_token_spy", False):
        sys.addaudithook(_audit)
        sys._authkeep_token_spy = True  # type: ignore[attr-defined]
    _events.clear()
    _watching["thread"] = threading.get_ident()
    try:
        yield _events
    finally:
        _watching["thread"] = None


def test_kid_with_path_or_sql_touches_no_file_database_or_network(
    keyset: KeySet, corpus: list[Case], at_now: None
) -> None:
    verify(keyset, valid_token(our_key(), NOW), AUDIENCE, TYP)  # warm: imports done
    kid_cases = [case for case in corpus if case.name.startswith("kid=")]
    assert len(kid_cases) >= 10
    with io_spy() as events:
        for case in kid_cases:
            with pytest.raises(InvalidToken):
                verify(keyset, case.token, AUDIENCE, TYP)
        with open(__file__, "rb"):  # the spy itself works
            pass
    assert events == [f"open {__file__!r}"]


# --- Over HTTP: 401 invalid_token, never a 5xx ------------------------------------------------


def _verifier_app(keyset: KeySet) -> FastAPI:
    """A route that verifies whatever token it is sent, behind authkeep's one error handler."""
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/verify")
    async def verify_route(token: Any = Body(embed=True)) -> dict[str, str]:
        return {"sub": verify(keyset, token, AUDIENCE, TYP).subject}

    return app


async def test_corpus_over_http_is_all_401_invalid_token(
    keyset: KeySet, corpus: list[Case], at_now: None
) -> None:
    transport = httpx.ASGITransport(app=_verifier_app(keyset))
    statuses: Counter[int] = Counter()
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        good = await client.post("/verify", json={"token": valid_token(our_key(), NOW)})
        assert good.json() == {"sub": "user-42"}
        # JSON has no bytes: that one case is the valid token once decoded.
        sendable = [case for case in corpus if not isinstance(case.token, bytes)]
        for case in sendable:
            response = await client.post("/verify", json={"token": case.token})
            statuses[response.status_code] += 1
            assert response.status_code == 401, case.name
            assert response.json()["error"] == "invalid_token"
            assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    FIGURES.append(f"BI-04 over HTTP: {dict(statuses)} for {len(sendable)} tokens (5xx: 0)")


# --- Property: any change to a valid token is rejected, and only with InvalidToken -------------


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_any_mutation_of_a_valid_token_is_rejected(keyset: KeySet, data: st.DataObject) -> None:
    with time_machine.travel(NOW, tick=False):
        token = valid_token(our_key(), NOW)
        position = data.draw(st.integers(0, len(token) - 1))
        replacement = data.draw(st.text(max_size=3))
        cut = data.draw(st.integers(0, 2))
        mutated = token[:position] + replacement + token[position + cut :]
        if mutated == token:
            return
        with pytest.raises(InvalidToken):
            verify(keyset, mutated, AUDIENCE, TYP)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(junk=st.one_of(st.text(max_size=400), st.binary(max_size=200), st.none(), st.integers()))
def test_arbitrary_input_raises_only_invalid_token(keyset: KeySet, junk: object) -> None:
    with pytest.raises(InvalidToken):
        service.verify(keyset, junk, AUDIENCE, TYP)  # type: ignore[arg-type]
