"""`issue` / `verify`: round trip, exp/nbf leeway at the second (CHK-JWT-03), cross-purpose swaps
(CHK-JWT-04) and key rotation (CHK-JWT-06)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from itertools import product

import httpx
import jwt
import pytest
import time_machine
from cryptography.hazmat.primitives.asymmetric import ec

from authkeep.app import create_app
from authkeep.errors import ConfigError
from authkeep.tokens.keys import KeySet, SigningKey
from authkeep.tokens.service import (
    LEEWAY_SECONDS,
    MAX_TOKEN_LENGTH,
    InvalidToken,
    issue,
    verify,
)
from support.secrets_scan import FIGURES

T0 = 1_800_000_000
ISSUER = "https://auth.example.test"


def new_key() -> SigningKey:
    return SigningKey.of(ec.generate_private_key(ec.SECP256R1()))


@pytest.fixture
def keyset() -> KeySet:
    return KeySet.of(ISSUER, new_key())


def issued_at(keyset: KeySet, when: int, ttl: int = 300, **kw: object) -> str:
    with time_machine.travel(when, tick=False):
        return issue(keyset, "user-1", "authkeep", ttl, **kw)  # type: ignore[arg-type]


def verify_at(keyset: KeySet, token: str, when: float, **kw: str) -> object:
    with time_machine.travel(when, tick=False):
        return verify(keyset, token, kw.get("audience", "authkeep"), kw.get("typ", "at+jwt"))


def test_round_trip_carries_every_claim(keyset: KeySet) -> None:
    token = issued_at(keyset, T0, ttl=600, extra_claims={"sid": "s-1", "scope": ["read"]})
    claims = verify_at(keyset, token, T0 + 1)
    assert claims.subject == "user-1"  # type: ignore[attr-defined]
    assert claims.audience == "authkeep"  # type: ignore[attr-defined]
    assert claims.issuer == ISSUER  # type: ignore[attr-defined]
    assert claims.token_type == "at+jwt"  # type: ignore[attr-defined]
    assert claims.key_id == keyset.require_signing().kid  # type: ignore[attr-defined]
    assert claims.issued_at == datetime.fromtimestamp(T0, UTC)  # type: ignore[attr-defined]
    assert claims.expires_at == datetime.fromtimestamp(T0 + 600, UTC)  # type: ignore[attr-defined]
    assert dict(claims.extra) == {"sid": "s-1", "scope": ["read"]}  # type: ignore[attr-defined]


def test_issued_header_is_es256_with_kid_and_typ_only(keyset: KeySet) -> None:
    token = issued_at(keyset, T0)
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "ES256", "typ": "at+jwt", "kid": keyset.require_signing().kid}
    signature = jwt.utils.base64url_decode(token.split(".")[2])
    assert len(signature) == 64  # raw R‖S, not DER


def test_ttl_accepts_timedelta_and_rejects_non_positive(keyset: KeySet) -> None:
    token = issued_at(keyset, T0, ttl=timedelta(minutes=15))  # type: ignore[arg-type]
    assert jwt.decode(token, options={"verify_signature": False})["exp"] == T0 + 900
    for bad in (0, -5, timedelta(0)):
        with pytest.raises(ValueError, match="ttl"):
            issue(keyset, "u", "authkeep", bad)


def test_extra_claims_cannot_override_registered_claims(keyset: KeySet) -> None:
    for name in ("iss", "sub", "aud", "exp", "nbf", "iat", "jti"):
        with pytest.raises(ValueError, match=name):
            issue(keyset, "u", "authkeep", 60, extra_claims={name: "x"})


def test_each_token_has_its_own_id(keyset: KeySet) -> None:
    ids = {verify_at(keyset, issued_at(keyset, T0), T0).token_id for _ in range(50)}  # type: ignore[attr-defined]
    assert len(ids) == 50


# --- CHK-JWT-03: exp and nbf with a leeway of at most 60 s, checked at the second -------------


def test_leeway_is_at_most_sixty_seconds() -> None:
    assert 0 < LEEWAY_SECONDS <= 60


def test_exp_boundary_with_leeway(keyset: KeySet) -> None:
    token = issued_at(keyset, T0, ttl=300)
    exp = T0 + 300
    verify_at(keyset, token, exp - 1)
    verify_at(keyset, token, exp + LEEWAY_SECONDS - 1)
    for late in (exp + LEEWAY_SECONDS, exp + LEEWAY_SECONDS + 1, exp + 86_400):
        with pytest.raises(InvalidToken) as caught:
            verify_at(keyset, token, late)
        assert caught.value.reason == "expired"


def test_nbf_boundary_with_leeway(keyset: KeySet) -> None:
    token = issued_at(keyset, T0, ttl=300)  # nbf = iat = T0
    verify_at(keyset, token, T0 - LEEWAY_SECONDS)
    for early in (T0 - LEEWAY_SECONDS - 1, T0 - 3600):
        with pytest.raises(InvalidToken) as caught:
            verify_at(keyset, token, early)
        assert caught.value.reason == "not_yet_valid"


# --- CHK-JWT-04: a token minted for one purpose is never accepted as another ------------------


def test_cross_purpose_swap_matrix(keyset: KeySet) -> None:
    purposes = [
        ("at+jwt", "authkeep"),
        ("ws-ticket+jwt", "relay"),
        ("email-link+jwt", "email"),
        ("device+jwt", "agents"),
    ]
    tokens = {}
    for typ, audience in purposes:
        with time_machine.travel(T0, tick=False):
            tokens[(typ, audience)] = issue(keyset, "user-1", audience, 300, typ=typ)
    rejected = accepted = 0
    # Every verifier expectation: each typ with each audience (16 combinations).
    expectations = list(product([t for t, _ in purposes], [a for _, a in purposes]))
    for minted, (typ, audience) in product(purposes, expectations):
        try:
            verify_at(keyset, tokens[minted], T0 + 1, audience=audience, typ=typ)
        except InvalidToken:
            rejected += 1
            assert (typ, audience) != minted
        else:
            accepted += 1
            assert (typ, audience) == minted
    FIGURES.append(
        f"CHK-JWT-04 swap matrix: {len(purposes)} purposes x {len(expectations)} expectations: "
        f"{accepted} accepted (own purpose only), {rejected} rejected"
    )
    assert accepted == len(purposes)
    assert rejected == len(purposes) * len(expectations) - len(purposes)


def test_token_of_another_issuer_with_the_same_key_is_rejected() -> None:
    key = new_key()
    theirs = issued_at(KeySet.of("https://other.example", key), T0)
    with pytest.raises(InvalidToken) as caught:
        verify_at(KeySet.of(ISSUER, key), theirs, T0)
    assert caught.value.reason == "wrong_issuer"


def test_size_limit_is_checked_before_parsing(keyset: KeySet) -> None:
    token = issued_at(keyset, T0, extra_claims={"pad": "x" * (MAX_TOKEN_LENGTH * 3 // 4 - 400)})
    assert len(token) <= MAX_TOKEN_LENGTH
    verify_at(keyset, token, T0)
    big = issued_at(keyset, T0, extra_claims={"pad": "x" * MAX_TOKEN_LENGTH})
    with pytest.raises(InvalidToken) as caught:
        verify_at(keyset, big, T0)
    assert caught.value.reason == "malformed"


# --- CHK-JWT-06: rotation -----------------------------------------------------------------------


def test_rotation_keeps_old_tokens_valid_until_exp_then_drops_them() -> None:
    """publish next → swap → keep the old one as next until its last token expires → remove."""
    old, new = new_key(), new_key()
    before = KeySet.of(ISSUER, old)
    published = KeySet.of(ISSUER, old, new)  # step 1: next key published, not used
    swapped = KeySet.of(ISSUER, new, old)  # step 2: sign with new, old kept as next
    after = KeySet.of(ISSUER, new)  # step 3: old removed once its tokens expired

    old_token = issued_at(before, T0, ttl=900)
    assert issued_at(published, T0).count(".") == 2
    assert jwt.get_unverified_header(issued_at(published, T0))["kid"] == old.kid
    new_token = issued_at(swapped, T0 + 600, ttl=900)
    assert jwt.get_unverified_header(new_token)["kid"] == new.kid

    for keyset in (before, published, swapped):
        verify_at(keyset, old_token, T0 + 899)
    verify_at(published, new_token, T0 + 601)  # verifiers that only saw step 1 accept it too
    verify_at(swapped, new_token, T0 + 601)
    verify_at(after, new_token, T0 + 601)
    with pytest.raises(InvalidToken) as caught:
        verify_at(after, old_token, T0 + 899)
    assert caught.value.reason == "unknown_kid"
    assert [k["kid"] for k in swapped.jwks()["keys"]] == [new.kid, old.kid]


async def test_jwks_route_publishes_both_keys_public_only(make_settings, tmp_path) -> None:
    old, new = new_key(), new_key()

    def pem(key: SigningKey) -> str:
        from cryptography.hazmat.primitives import serialization

        return key.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()

    settings = make_settings(jwt_key=pem(new), jwt_next_key=pem(old), jwt_issuer=ISSUER)
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get("/.well-known/jwks.json")
    assert response.status_code == 200
    assert response.headers["cache-control"] == "public, max-age=300"
    body = response.json()
    assert [k["kid"] for k in body["keys"]] == [new.kid, old.kid]
    for jwk in body["keys"]:
        assert set(jwk) == {"kty", "crv", "x", "y", "kid", "use", "alg"}
        assert (jwk["kty"], jwk["crv"], jwk["alg"], jwk["use"]) == ("EC", "P-256", "ES256", "sig")
    # A token signed under the old key verifies with the public key taken from the JWKS.
    old_token = issued_at(KeySet.of(ISSUER, old), T0)
    public = jwt.PyJWK.from_json(json.dumps(body["keys"][1]))
    with time_machine.travel(T0, tick=False):
        decoded = jwt.decode(old_token, public, algorithms=["ES256"], audience="authkeep")
    assert decoded["sub"] == "user-1"
    with time_machine.travel(T0, tick=False):
        assert verify(app.state.keyset, old_token, "authkeep", "at+jwt").key_id == old.kid


def test_keyset_without_signing_key_names_the_variable() -> None:
    keyset = KeySet.of(ISSUER, None, new_key())
    with pytest.raises(ConfigError, match="AUTHKEEP_JWT_KEY"):
        issue(keyset, "u", "authkeep", 60)
