"""The API key format (keys/format.py): properties of `new_key` and `parse_key`, the check
that lets verify refuse a mistyped key without a database lookup (SPEC §7; RELIABILITY BI-03
spirit, BI-02's "API-key parser" input space: hypothesis, 0 counter-examples)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from authkeep.keys.format import (
    CHECKSUM_LENGTH,
    MAX_KEY_LENGTH,
    PREFIX_PATTERN,
    SECRET_LENGTH,
    ParsedKey,
    display_start,
    key_digest,
    new_key,
    parse_key,
)

prefixes = st.from_regex(PREFIX_PATTERN, fullmatch=True)
keys = prefixes.map(new_key)


@given(prefixes)
@settings(max_examples=300, deadline=None)
def test_every_new_key_parses(prefix: str) -> None:
    key = new_key(prefix)
    assert parse_key(key) == ParsedKey(prefix=prefix, key=key)
    assert len(key) == len(prefix) + 1 + SECRET_LENGTH + CHECKSUM_LENGTH <= MAX_KEY_LENGTH
    assert display_start(key).startswith(f"{prefix}_")
    assert key.startswith(display_start(key))


@given(keys, st.data())
@settings(max_examples=500, deadline=None)
def test_any_single_character_change_is_refused(key: str, data: st.DataObject) -> None:
    """A substitution anywhere (prefix, separator, secret or checksum), by any character."""
    position = data.draw(st.integers(0, len(key) - 1))
    replacement = data.draw(st.characters().filter(lambda c: c != key[position]))
    assert parse_key(key[:position] + replacement + key[position + 1 :]) is None


@given(keys, st.data())
@settings(max_examples=300, deadline=None)
def test_truncation_and_extension_are_refused(key: str, data: st.DataObject) -> None:
    """Characters cut from either end, or text added at either end."""
    cut = data.draw(st.integers(1, len(key)))
    assert parse_key(key[:-cut]) is None
    assert parse_key(key[cut:]) is None
    extra = data.draw(st.text(min_size=1, max_size=20))
    assert parse_key(key + extra) is None
    assert parse_key(extra + key) is None


@given(keys, st.data())
@settings(max_examples=300, deadline=None)
def test_swapping_two_characters_is_refused(key: str, data: st.DataObject) -> None:
    """A transposition — the other common typo — unless the two characters are equal."""
    first = data.draw(st.integers(0, len(key) - 2))
    second = data.draw(st.integers(first + 1, len(key) - 1))
    chars = list(key)
    chars[first], chars[second] = chars[second], chars[first]
    swapped = "".join(chars)
    assert swapped == key or parse_key(swapped) is None


@given(
    st.one_of(
        st.text(max_size=200),
        st.from_regex(r"[a-z][a-z0-9]{0,15}_[0-9A-Za-z]{49}", fullmatch=True),
        st.binary(max_size=100),
        st.none(),
        st.integers(),
    )
)
@settings(max_examples=500, deadline=None)
def test_arbitrary_input_never_raises(junk: Any) -> None:
    """Anything at all: None or a key that reads back as itself; never an exception. (The
    second strategy has the exact shape of a key, so only the checksum can refuse it.)"""
    parsed = parse_key(junk)
    assert parsed is None or (parsed.key == junk and junk.startswith(parsed.prefix + "_"))


@given(keys, keys, st.text(min_size=1, max_size=40), st.text(min_size=1, max_size=40))
@settings(max_examples=200, deadline=None)
def test_the_digest_depends_on_key_and_server_secret(
    key: str, other: str, secret: str, other_secret: str
) -> None:
    digest = key_digest(secret, key)
    assert len(digest) == 64
    assert int(digest, 16) >= 0
    assert key_digest(secret, key) == digest
    assert (key_digest(secret, other) == digest) is (other == key)
    assert (key_digest(other_secret, key) == digest) is (other_secret == secret)
