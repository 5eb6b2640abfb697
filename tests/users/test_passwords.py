"""Password policy and hashing (RELIABILITY CHK-PW-01..04, BI-07): length by code points,
long passwords, oversize input refused before any hashing, normalisation, the blocklist and
context words."""

from __future__ import annotations

import asyncio
import random
import time
import unicodedata
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import given, settings
from hypothesis import strategies as st
from identity_helpers import (
    SAME_ORIGIN,
    bearer,
    cheap_hashing,
    client_for,
    new_email,
    new_user,
    sign_in,
    sign_up,
    started_app,
)

from authkeep.config import Settings, load_settings
from authkeep.users.passwords import (
    PasswordRejected,
    blocklist,
    hash_password,
    normalize,
    validate,
    verify_password,
)
from support.secrets_scan import FIGURES, SCAN

# Twenty distinct emoji, not a plain run of code points (a run is refused as a sequence).
EMOJI = "".join(chr(0x1F600 + (i * 7) % 64) for i in range(20))


@pytest.fixture
def policy(make_settings) -> Settings:
    settings: Settings = make_settings()
    return settings


def reason(password: str, policy: Settings, **kwargs: object) -> str | None:
    try:
        validate(password, policy, **kwargs)  # type: ignore[arg-type]
    except PasswordRejected as exc:
        return exc.code
    return None


# CHK-PW-01: minimum length in code points (15 without MFA, 8 with).
@pytest.mark.parametrize(
    ("password", "expected"),
    [
        ("plum-sky-river", "password_too_short"),  # 14 ASCII
        ("plum-sky-rivers", None),  # 15 ASCII
        (EMOJI[:14], "password_too_short"),  # 14 emoji = 56 bytes
        (EMOJI[:15], None),  # 15 emoji = 60 bytes
        ("plum-sky-rivex\u0301", None),  # 14 ASCII + a combining mark: 15 code points
        ("plum-sky-rive\u0301", "password_too_short"),  # e + U+0301 composes (NFKC) to é: 14
        ("plum sky river", "password_too_short"),  # spaces count, 14
        ("plum sky rivers", None),
    ],
)
def test_minimum_length_counts_code_points_CHK_PW_01(
    policy: Settings, password: str, expected: str | None
):
    assert reason(password, policy) == expected


def test_mfa_users_may_use_the_shorter_minimum_CHK_PW_01(policy: Settings):
    assert reason("tulip#gravel", policy) == "password_too_short"
    assert reason("tulip#gravel", policy, has_mfa=True) is None
    assert reason("tulip#g", policy, has_mfa=True) == "password_too_short"


@pytest.mark.parametrize(
    ("password", "expected"),
    [
        ("Password12345678!", "password_common"),  # common word with digits/symbols around
        ("1qaz2wsx3edc4rfv", "password_common"),  # a long list entry
        ("pass word 1234 5678", "password_common"),  # separators stripped
        ("authkeep2024!!!!", "password_context"),  # product name + digits
        ("AUTHKEEP authkeep", "password_context"),
        ("jane.doe@example.com", "password_context"),  # the email itself
        ("janedoejanedoe!!1", "password_context"),  # the local part's words
        ("doe.jane 12345678", "password_context"),
        ("aaaaaaaaaaaaaaaa", "password_repetitive"),
        ("abcabcabcabcabcabc", "password_repetitive"),
        ("123456789012345678", "password_repetitive"),
        ("zyxwvutsrqponmlk", "password_repetitive"),
        ("jane likes the violet harbour", None),  # contains a context word among others
        ("correct horse battery staple", None),
    ],
)
def test_blocklist_context_words_and_repetition_CHK_PW_04(
    policy: Settings, password: str, expected: str | None
):
    assert reason(password, policy, email="jane.doe@example.com") == expected


def test_shipped_blocklist_has_at_least_3000_policy_length_entries_CHK_PW_04(policy: Settings):
    entries = blocklist()
    fits_mfa_policy = [w for w in entries if len(w) >= policy.password_min_length_with_mfa]
    assert len(fits_mfa_policy) >= 3000
    FIGURES.append(
        f"CHK-PW-04 blocklist: {len(entries)} entries shipped, {len(fits_mfa_policy)} of "
        f">= {policy.password_min_length_with_mfa} code points"
    )


def test_oversize_and_invalid_text_are_refused_by_reason(policy: Settings):
    assert reason("x" * 257, policy) == "password_too_long"
    assert reason("violet harbour \ud800 lamp", policy) == "password_invalid"
    assert reason("a" * 256 + "b", policy) == "password_too_long"


@given(st.text(max_size=80), st.sampled_from(["a@b.example", "jane.doe@example.com", None]))
@settings(max_examples=300, deadline=None)
def test_policy_only_ever_answers_with_a_reason(password: str, email: str | None):
    """Any text: either accepted or refused with a `password_*` reason, never a crash."""
    code = reason(password, load_settings(), email=email)
    assert code is None or code.startswith("password_")


@pytest.fixture(scope="module")
def cheap() -> Iterator[object]:
    hashing = cheap_hashing()
    yield hashing
    hashing.close()


@given(st.text(min_size=1, max_size=64))
@settings(max_examples=200, deadline=None)
def test_hash_and_verify_properties_CHK_PW_03(cheap, password: str):  # type: ignore[no-untyped-def]
    """verify(hash(p), p) holds; p minus its last character fails; the case-swapped password
    fails unless it normalises to the same text; NFC, NFD and NFKC spellings of p verify.
    Test-only argon2 parameters (1 MiB, t=1); production parameters are CHK-PS-01's."""

    async def check() -> None:
        stored = await hash_password(cheap, password)
        assert (await verify_password(cheap, stored, password))[0]
        if normalize(password[:-1]) != normalize(password):
            assert not (await verify_password(cheap, stored, password[:-1]))[0]
        swapped = password.swapcase()
        if normalize(swapped) != normalize(password):
            assert not (await verify_password(cheap, stored, swapped))[0]
        for form in ("NFC", "NFD", "NFKC", "NFKD"):
            assert (await verify_password(cheap, stored, unicodedata.normalize(form, password)))[0]

    asyncio.run(check())


def test_normalisation_makes_equivalent_spellings_one_password():
    assert normalize("caf\u00e9") == normalize("cafe\u0301")
    assert normalize("\uff30\uff41\uff53\uff53") == "Pass"  # full-width
    assert normalize("Pass") != normalize("pass")  # no case change


@pytest.fixture
async def roomy_app(migrated_url: str, make_settings) -> AsyncIterator[FastAPI]:
    async with started_app(make_settings, migrated_url, login_ip_failures_per_minute=10_000) as a:
        yield a


@pytest.fixture
async def roomy_client(roomy_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(roomy_app) as client:
        yield client


async def test_boundary_through_the_api_CHK_PW_01(roomy_client: httpx.AsyncClient):
    short = await sign_up(roomy_client, new_email(), "plum-sky-river")
    assert (short.status_code, short.json()["error"]) == (422, "password_too_short")
    for password in ("plum-sky-rivers", EMOJI[:15], "plum-sky-rivex\u0301"):
        email = new_email()
        SCAN.register(password)
        assert (await sign_up(roomy_client, email, password)).status_code == 202
        assert (await sign_in(roomy_client, email, password)).status_code == 200


@pytest.mark.parametrize("length", [64, 128, 256])
async def test_long_passwords_register_and_sign_in_CHK_PW_02(
    roomy_client: httpx.AsyncClient, length: int
):
    password = SCAN.register(("violet harbour lamp " * 20)[: length - 8] + "k3y!Q9z#")
    assert len(password) == length
    email = new_email()
    assert (await sign_up(roomy_client, email, password)).status_code == 202
    assert (await sign_in(roomy_client, email, password)).status_code == 200
    assert (await sign_in(roomy_client, email, password[:-1])).status_code == 401


async def test_oversize_input_is_refused_before_any_hashing_CHK_PW_02_BI_07(
    roomy_app: FastAPI, roomy_client: httpx.AsyncClient
):
    """1 MiB password, 10 MiB JSON, a chunked body without length, 100 k-char email, 257
    code points: 413/422 with 0 argon2 calls."""
    email, _password, token = await new_user(roomy_client)
    hashing = roomy_app.state.passwords
    before = (hashing.hash_calls, hashing.verify_calls)
    mib = "p" * (1 << 20)
    timings = []
    cases = [
        ("/api/auth/sign-up", {"email": new_email(), "password": mib}, 413),
        ("/api/auth/sign-in", {"email": email, "password": mib}, 413),
        ("/api/auth/sign-in", {"email": email, "password": "x" * 10 * (1 << 20)}, 413),
        ("/api/auth/sign-in", {"email": "e" * 100_000 + "@example.com", "password": "x"}, 413),
        ("/api/auth/sign-in", {"email": email, "password": "violet " * 36 + "abcde"}, 422),
        ("/api/auth/sign-up", {"email": new_email(), "password": "v" * 257}, 422),
        (
            "/api/auth/password/change",
            {"current_password": mib, "new_password": "violet harbour lamp"},
            413,
        ),
        (
            "/api/auth/password/change",
            {"current_password": "x" * 300, "new_password": "violet harbour lamp"},
            422,
        ),
    ]
    for path, body, status in cases:
        started = time.perf_counter()
        response = await roomy_client.post(path, json=body, headers=bearer(token))
        timings.append(time.perf_counter() - started)
        assert response.status_code == status, (path, response.text[:200])
        assert response.json()["error"] in {"payload_too_large", "password_too_long"}

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"email": "a@b.example", "password": "'
        for _ in range(64):
            yield b"x" * 16384
        yield b'"}'

    chunked = await roomy_client.post(
        "/api/auth/sign-in", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert (chunked.status_code, chunked.json()["error"]) == (413, "payload_too_large")
    assert (hashing.hash_calls, hashing.verify_calls) == before
    FIGURES.append(
        f"CHK-PW-02/BI-07 oversize rejections (in-process, incl. client-side JSON encoding): "
        f"1 MiB password {timings[1] * 1000:.1f} ms, 10 MiB JSON {timings[2] * 1000:.1f} ms, "
        f"max {max(timings) * 1000:.1f} ms over {len(timings)} requests, 0 hash calls"
    )


async def test_name_field_is_bounded(roomy_client: httpx.AsyncClient):
    response = await sign_up(roomy_client, new_email(), "violet harbour lamp", name="n" * 5000)
    assert (response.status_code, response.json()["error"]) == (422, "validation_error")


@pytest.fixture
async def short_policy_app(migrated_url: str, make_settings) -> AsyncIterator[FastAPI]:
    """Minimum length 8 (a valid setting), so every list entry fits the policy's length."""
    async with started_app(
        make_settings, migrated_url, password_min_length=8, login_ip_failures_per_minute=10_000
    ) as application:
        yield application


async def test_200_random_list_entries_are_refused_at_sign_up_and_change_CHK_PW_04(
    short_policy_app: FastAPI,
):
    entries = sorted(blocklist())
    sample = random.Random(4).sample(entries, 200)
    async with client_for(short_policy_app) as client:
        _email, _password, token = await new_user(client)
        client.cookies.clear()
        hashing = short_policy_app.state.passwords
        hashes_before = hashing.hash_calls
        for entry in sample:
            up = await sign_up(client, new_email(), entry)
            change = await client.post(
                "/api/auth/password/change",
                json={"current_password": "irrelevant", "new_password": entry},
                headers=bearer(token),
            )
            for response in (up, change):
                assert (response.status_code, response.json()["error"]) == (
                    422,
                    "password_common",
                ), entry
        assert hashing.hash_calls == hashes_before


async def test_email_local_part_is_refused_as_password_CHK_PW_04(
    roomy_client: httpx.AsyncClient,
):
    response = await sign_up(roomy_client, "violetharbour@example.com", "VioletHarbour2024")
    assert (response.status_code, response.json()["error"]) == (422, "password_context")
    assert "detail" in response.json()
    same_origin = await roomy_client.post(
        "/api/auth/sign-up",
        json={"email": "mail@example.com", "password": "mail@example.com"},
        headers=SAME_ORIGIN,
    )
    assert same_origin.json()["error"] == "password_context"
