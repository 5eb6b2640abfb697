"""The JWT forgery corpus (RELIABILITY BI-04, CHK-JWT-01/02/07): every case must be rejected.

`build_corpus(our_key, now)` generates each case from scratch: the same inputs give the same
tokens (ECDSA and EdDSA signatures are deterministic here: RFC 6979 / Ed25519), except the RSA
cases, whose key is made fresh (only their header matters: `alg` is refused before any key is
used). Tokens are built by hand, not by PyJWT, so malformed headers and payloads are possible.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.x509.oid import NameOID

from authkeep.tokens.keys import SigningKey, thumbprint
from authkeep.tokens.service import LEEWAY_SECONDS

AUDIENCE = "authkeep"
ISSUER = "https://auth.example.test"
TYP = "at+jwt"
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

# Deterministic keys: a scalar or seed fixed per role.
OUR_SCALAR = 0x5EED_0001_C0FFEE_1234_5678_9ABC_DEF0_1111_2222_3333_4444_5555_6666
ATTACKER_SCALAR = 0xBAD_0002_DEAD_BEEF_0BAD_CAFE_F00D_7777_8888_9999_AAAA_BBBB_CCCC


@dataclass(frozen=True)
class Case:
    name: str
    token: Any  # usually str; a few cases are not strings at all


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def our_key() -> SigningKey:
    return SigningKey.of(ec.derive_private_key(OUR_SCALAR, ec.SECP256R1()))


def attacker_p256() -> ec.EllipticCurvePrivateKey:
    return ec.derive_private_key(ATTACKER_SCALAR, ec.SECP256R1())


def attacker_p384() -> ec.EllipticCurvePrivateKey:
    return ec.derive_private_key(ATTACKER_SCALAR, ec.SECP384R1())


def segment(value: dict[str, Any] | str | bytes) -> str:
    """A JSON object (compact), raw JSON text (for duplicate keys), or raw bytes."""
    if isinstance(value, dict):
        value = json.dumps(value, separators=(",", ":"))
    return b64(value.encode() if isinstance(value, str) else value)


def signing_input(header: dict[str, Any] | str, payload: dict[str, Any] | str | bytes) -> str:
    return f"{segment(header)}.{segment(payload)}"


def es_signature(key: ec.EllipticCurvePrivateKey, data: str, *, raw: bool = True) -> bytes:
    """ECDSA over SHA-256 (SHA-384 for P-384), RFC 6979 deterministic; raw R‖S or DER."""
    digest = hashes.SHA384() if isinstance(key.curve, ec.SECP384R1) else hashes.SHA256()
    der = key.sign(data.encode(), ec.ECDSA(digest, deterministic_signing=True))
    if not raw:
        return der
    r, s = decode_dss_signature(der)
    size = (key.curve.key_size + 7) // 8
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


def es_token(key: ec.EllipticCurvePrivateKey, header: Any, payload: Any) -> str:
    data = signing_input(header, payload)
    return f"{data}.{b64(es_signature(key, data))}"


def claims(now: int, **changes: Any) -> dict[str, Any]:
    """Claims that would verify at `now`; a value of None removes that claim."""
    base: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "user-42",
        "aud": AUDIENCE,
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "jti": "corpus",
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def header(kid: Any, **changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"alg": "ES256", "typ": TYP, "kid": kid}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def valid_token(key: SigningKey, now: int) -> str:
    """The control: a token the verifier must accept at `now`."""
    return es_token(key.private_key, header(key.kid), claims(now))


def _alg_none(key: SigningKey, now: int) -> list[Case]:
    good = valid_token(key, now)
    cases = []
    for spelling in ("none", "None", "NONE", "nOnE"):
        data = signing_input(header(key.kid, alg=spelling), claims(now))
        cases.append(Case(f"alg={spelling}, empty signature", f"{data}."))
        cases.append(Case(f"alg={spelling}, signature copied", f"{data}.{good.split('.')[2]}"))
    data = signing_input({"alg": "none"}, claims(now))
    cases.append(Case("alg=none, no kid or typ", f"{data}."))
    return cases


def _hmac_with_public_key(key: SigningKey, now: int) -> list[Case]:
    secrets = {
        "PEM": key.public_pem().encode(),
        "PEM without newline": key.public_pem().strip().encode(),
        "JWK": json.dumps(key.public_jwk()).encode(),
        "JWK compact": json.dumps(key.public_jwk(), separators=(",", ":")).encode(),
        "DER": key.public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    }
    cases = []
    for alg, digest in (
        ("HS256", hashlib.sha256),
        ("HS384", hashlib.sha384),
        ("HS512", hashlib.sha512),
    ):
        for form, secret in secrets.items():
            data = signing_input(header(key.kid, alg=alg), claims(now))
            mac = hmac.new(secret, data.encode(), digest).digest()
            cases.append(Case(f"{alg} keyed with our public key ({form})", f"{data}.{b64(mac)}"))
    return cases


def _other_algorithms(key: SigningKey, now: int) -> list[Case]:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cases = []
    data = signing_input(header(key.kid, alg="RS256"), claims(now))
    sig = rsa_key.sign(data.encode(), padding.PKCS1v15(), hashes.SHA256())
    cases.append(Case("RS256 signed by an attacker RSA key", f"{data}.{b64(sig)}"))
    data = signing_input(header(key.kid, alg="PS256"), claims(now))
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
    cases.append(
        Case(
            "PS256 signed by an attacker RSA key",
            f"{data}.{b64(rsa_key.sign(data.encode(), pss, hashes.SHA256()))}",
        )
    )
    ed = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    for alg in ("EdDSA", "Ed25519"):
        data = signing_input(header(key.kid, alg=alg), claims(now))
        cases.append(
            Case(
                f"{alg} signed by an attacker Ed25519 key", f"{data}.{b64(ed.sign(data.encode()))}"
            )
        )
    for alg in ("ES384", "ES512", "es256", "ES256 ", "ES256K"):
        data = signing_input(header(key.kid, alg=alg), claims(now))
        cases.append(
            Case(
                f"alg={alg!r} with a real ES256 signature",
                f"{data}.{b64(es_signature(key.private_key, data))}",
            )
        )
    cases.append(
        Case(
            "alg as a list", es_token(attacker_p256(), header(key.kid, alg=["ES256"]), claims(now))
        )
    )
    return cases


def _kid_attacks(key: SigningKey, now: int) -> list[Case]:
    attacker = attacker_p256()
    evil_kids: list[Any] = [
        thumbprint(attacker.public_key()),
        "../../../../../../etc/passwd",
        "../secrets.json",
        "../../data/secrets.json\x00.pem",
        "/dev/zero",
        "file:///etc/passwd",
        "' OR '1'='1",
        "x'; DROP TABLE users; --",
        "1 UNION SELECT private_key FROM keys",
        "",
        key.kid + " ",
        key.kid.upper(),
    ]
    cases = [
        Case(f"kid={kid!r} signed by an attacker key", es_token(attacker, header(kid), claims(now)))
        for kid in evil_kids
    ]
    for kid in (None, 42, [key.kid], {"kid": key.kid}, True):
        hdr = header(key.kid) if kid is None else header(kid)
        if kid is None:
            del hdr["kid"]
        cases.append(
            Case(f"kid={kid!r} (our key signed)", es_token(key.private_key, hdr, claims(now)))
        )
    cases.append(
        Case("our kid, attacker signature", es_token(attacker, header(key.kid), claims(now)))
    )
    return cases


def _self_signed_certificate(private_key: ec.EllipticCurvePrivateKey) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "attacker.example")])
    start = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private_key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=3650))
        .sign(private_key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.DER)


def _header_injection(key: SigningKey, now: int) -> list[Case]:
    attacker = attacker_p256()
    attacker_jwk = SigningKey.of(attacker).public_jwk()
    attacker_kid = attacker_jwk["kid"]
    cert = base64.b64encode(_self_signed_certificate(attacker)).decode()
    injections: dict[str, Any] = {
        "jku": "https://attacker.example/jwks.json",
        "x5u": "https://attacker.example/cert.pem",
        "jwk": attacker_jwk,
        "x5c": [cert],
        "x5t": b64(hashlib.sha1(cert.encode()).digest()),  # noqa: S324 - attacker-side header
        "x5t#S256": b64(hashlib.sha256(cert.encode()).digest()),
    }
    cases = []
    for name, value in injections.items():
        for kid, label in ((attacker_kid, "attacker kid"), (key.kid, "our kid")):
            token = es_token(attacker, header(kid, **{name: value}), claims(now))
            cases.append(Case(f"{name} header, {label}, signed by the attacker", token))
        # Even on a token we really signed, the header is refused rather than ignored.
        token = es_token(key.private_key, header(key.kid, **{name: value}), claims(now))
        cases.append(Case(f"{name} header on a token we signed", token))
    no_kid = {"alg": "ES256", "typ": TYP, "jwk": attacker_jwk}
    cases.append(
        Case("jwk header carrying the signing key, no kid", es_token(attacker, no_kid, claims(now)))
    )
    for extra in (
        {"crit": ["exp"]},
        {"b64": False, "crit": ["b64"]},
        {"zip": "DEF"},
        {"cty": "JWT"},
    ):
        token = es_token(key.private_key, header(key.kid, **extra), claims(now))
        cases.append(Case(f"extra header {sorted(extra)}", token))
    return cases


def _signature_encodings(key: SigningKey, now: int) -> list[Case]:
    data = signing_input(header(key.kid), claims(now))
    raw = es_signature(key.private_key, data)
    r, s = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")

    def with_sig(sig: bytes) -> str:
        return f"{data}.{b64(sig)}"

    def rs(r_value: int, s_value: int) -> bytes:
        return r_value.to_bytes(32, "big") + s_value.to_bytes(32, "big")

    return [
        Case("r = s = 0 (psychic signature)", with_sig(bytes(64))),
        Case("r = 0, real s", with_sig(rs(0, s))),
        Case("real r, s = 0", with_sig(rs(r, 0))),
        Case("r = s = n (group order)", with_sig(rs(P256_ORDER, P256_ORDER))),
        Case("r = n + 1 (out of range, equals 1 mod n)", with_sig(rs(P256_ORDER + 1, s))),
        Case("DER-encoded signature", with_sig(encode_dss_signature(r, s))),
        Case("63-byte signature", with_sig(raw[:63])),
        Case("65-byte signature", with_sig(raw + b"\x00")),
        Case("65-byte signature, leading zero", with_sig(b"\x00" + raw)),
        Case("32-byte signature", with_sig(raw[:32])),
        Case("96-byte signature", with_sig(raw + raw[:32])),
        Case("signature of another token", f"{data}.{valid_token(key, now + 1).split('.')[2]}"),
    ]


def _wrong_curve(key: SigningKey, now: int) -> list[Case]:
    p384 = attacker_p384()
    return [
        Case("P-384 key, ES384 header", es_token(p384, header("p384", alg="ES384"), claims(now))),
        Case("P-384 key, ES256 header, our kid", es_token(p384, header(key.kid), claims(now))),
        Case(
            "P-384 key, ES256 header, own jwk",
            es_token(p384, header(key.kid, jwk={"kty": "EC", "crv": "P-384"}), claims(now)),
        ),
    ]


def _claim_problems(key: SigningKey, now: int) -> list[Case]:
    k = key.private_key
    beyond = LEEWAY_SECONDS + 1
    problems: dict[str, dict[str, Any]] = {
        "expired beyond the leeway": claims(now, exp=now - beyond, iat=now - 600, nbf=now - 600),
        "expired long ago": claims(now, exp=now - 86_400, iat=now - 90_000, nbf=now - 90_000),
        "nbf in the future": claims(now, nbf=now + 3600),
        "nbf just beyond the leeway": claims(now, nbf=now + beyond),
        "iat in the future": claims(now, iat=now + 3600),
        "wrong aud": claims(now, aud="relay"),
        "aud as a list": claims(now, aud=[AUDIENCE]),
        "aud as a list with ours and another": claims(now, aud=[AUDIENCE, "other"]),
        "wrong iss": claims(now, iss="https://attacker.example"),
        "iss with a trailing slash": claims(now, iss=ISSUER + "/"),
        "no exp": claims(now, exp=None),
        "no nbf": claims(now, nbf=None),
        "no iat": claims(now, iat=None),
        "no iss": claims(now, iss=None),
        "no aud": claims(now, aud=None),
        "no sub": claims(now, sub=None),
        "exp as a string": claims(now, exp=str(now + 300)),
        "exp as a float": claims(now, exp=now + 300.5),
        "exp as true": claims(now, exp=True),
        "exp huge": claims(now, exp=10**30),
        "sub as a number": claims(now, sub=42),
        "jti as a number": claims(now, jti=7),
    }
    cases = [
        Case(name, es_token(k, header(key.kid), payload)) for name, payload in problems.items()
    ]
    for typ in ("JWT", "jwt", "AT+JWT", "application/at+jwt", "dpop+jwt", "", None):
        hdr = header(key.kid, typ=typ)
        cases.append(Case(f"typ={typ!r}", es_token(k, hdr, claims(now))))
    return cases


def _duplicates(key: SigningKey, now: int) -> list[Case]:
    k = key.private_key
    body = json.dumps(claims(now), separators=(",", ":"))
    head = json.dumps(header(key.kid), separators=(",", ":"))
    return [
        Case("duplicate alg in header", es_token(k, head[:-1] + ',"alg":"none"}', claims(now))),
        Case("duplicate kid in header", es_token(k, head[:-1] + ',"kid":"../x"}', claims(now))),
        Case(
            "duplicate aud in payload", es_token(k, header(key.kid), '{"aud":"relay",' + body[1:])
        ),
        Case(
            "duplicate aud in payload, ours first",
            es_token(k, header(key.kid), body[:-1] + ',"aud":"relay"}'),
        ),
        Case(
            "duplicate sub in payload", es_token(k, header(key.kid), '{"sub":"admin",' + body[1:])
        ),
        Case(
            "duplicate exp in payload",
            es_token(k, header(key.kid), body[:-1] + f',"exp":{now + 10**6}}}'),
        ),
        Case("NaN exp in payload", es_token(k, header(key.kid), body[:-1] + ',"exp2":NaN}')),
        Case("payload is a JSON array", es_token(k, header(key.kid), "[1,2]")),
        Case("payload is not JSON", es_token(k, header(key.kid), "not json")),
        Case("payload is not UTF-8", es_token(k, header(key.kid), b"\xff\xfe{}")),
        Case(
            "header is a JSON string",
            f"{segment(json.dumps('ES256'))}.{segment(claims(now))}.{b64(bytes(64))}",
        ),
        Case(
            "deeply nested header",
            f"{segment('[' * 3000 + ']' * 3000)}.{segment(claims(now))}.{b64(bytes(64))}",
        ),
    ]


def _encoding_variants(key: SigningKey, now: int) -> list[Case]:
    good = valid_token(key, now)
    h, p, s = good.split(".")
    # The last of the 86 characters of a 64-byte signature carries 4 unused bits: flipping one
    # gives a different string that decodes to the very same bytes (a non-canonical twin).
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    twin = s[:-1] + alphabet[alphabet.index(s[-1]) ^ 1]
    padded = [x + "=" * (-len(x) % 4) for x in (h, p, s)]
    std = base64.b64encode(base64.urlsafe_b64decode(padded[2])).decode()
    return [
        Case("padding on every segment", ".".join(padded)),
        Case("padding on the signature", f"{h}.{p}.{padded[2]}"),
        Case("non-canonical last character", f"{h}.{p}.{twin}"),
        Case("standard base64 alphabet", f"{h}.{p}.{std}"),
        Case("leading space", " " + good),
        Case("trailing newline", good + "\n"),
        Case("space inside the payload", f"{h}.{p[:10]} {p[10:]}.{s}"),
        Case("newline inside the signature", f"{h}.{p}.{s[:20]}\n{s[20:]}"),
        Case("tab after a dot", f"{h}.\t{p}.{s}"),
        Case("Bearer prefix", "Bearer " + good),
        Case("two segments", f"{h}.{p}"),
        Case("four segments", f"{good}.{s}"),
        Case("five segments (JWE shape)", f"{h}.{p}.{s}.{s}.{s}"),
        Case("empty header", f".{p}.{s}"),
        Case("empty payload", f"{h}..{s}"),
        Case("empty string", ""),
        Case("only dots", ".."),
        Case("non-ASCII character", good[:-1] + "é"),
        Case("full-width dot", good.replace(".", "\uff0e", 1)),
        Case("bytes instead of str", good.encode()),
        Case("None", None),
        Case("an int", 12345),
    ]


def _nested_and_huge(key: SigningKey, now: int) -> list[Case]:
    inner = valid_token(key, now)
    k = key.private_key
    return [
        Case("nested JWS as payload, cty JWT", es_token(k, header(key.kid, cty="JWT"), inner)),
        Case("nested JWS as payload, no cty", es_token(k, header(key.kid), inner)),
        Case(
            "nested JWS inside a claim of a forged token",
            es_token(attacker_p256(), header(key.kid), claims(now, nested=inner)),
        ),
        Case(
            "1 MiB token (otherwise valid shape)",
            es_token(k, header(key.kid), claims(now, pad="x" * (1024 * 1024))),
        ),
        Case("8 KiB + 1 token", "a" * 4000 + "." + "b" * 4000 + "." + "c" * 193),
    ]


BUILDERS = (
    _alg_none,
    _hmac_with_public_key,
    _other_algorithms,
    _kid_attacks,
    _header_injection,
    _signature_encodings,
    _wrong_curve,
    _claim_problems,
    _duplicates,
    _encoding_variants,
    _nested_and_huge,
)


def build_corpus(key: SigningKey, now: int) -> list[Case]:
    """Every forgery case for a verifier trusting only `key`, at time `now`."""
    return [case for build in BUILDERS for case in build(key, now)]
