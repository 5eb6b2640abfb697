"""SPEC §4, the pure part: choosing, normalising, rewriting and displaying database URLs."""

from __future__ import annotations

import string
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from authkeep.config import Settings
from authkeep.core.dsn import (
    POSTGRES_DRIVER,
    SQLITE_DRIVER,
    admin_url,
    candidates,
    display_url,
    normalise,
    primary_source,
    rewrite_for_local_proxy,
    split_host_port,
)
from authkeep.errors import ConfigError
from support.settings import settings_from

PASSWORD = "Sup3rSecretPw"


def sources(settings: Settings) -> list[str]:
    return [candidate.source for candidate in candidates(settings)]


# --- precedence and blank values -------------------------------------------------------------


def test_auth_database_uri_wins_over_database_url(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_from(
        monkeypatch,
        AUTH_DATABASE_URI="postgresql://app:pw@auth-db/app",
        DATABASE_URL="postgresql://app:pw@other-db/app",
    )
    chain = candidates(settings)
    assert [(c.source, c.url.host) for c in chain] == [("AUTH_DATABASE_URI", "auth-db")]


def test_database_url_is_primary_when_auth_database_uri_unset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = settings_from(monkeypatch, DATABASE_URL="postgresql://app:pw@db/app")
    assert primary_source(settings) == ("DATABASE_URL", "postgresql://app:pw@db/app")


@pytest.mark.parametrize("blank", ["", "   ", "\t\n "])
def test_blank_auth_database_uri_counts_as_unset(
    monkeypatch: pytest.MonkeyPatch, blank: str
) -> None:
    settings = settings_from(
        monkeypatch, AUTH_DATABASE_URI=blank, DATABASE_URL="postgresql://app:pw@db/app"
    )
    assert sources(settings) == ["DATABASE_URL"]


@pytest.mark.parametrize("blank", ["", "   ", "\t\n "])
def test_blank_database_urls_give_no_candidates(
    monkeypatch: pytest.MonkeyPatch, blank: str
) -> None:
    settings = settings_from(
        monkeypatch,
        AUTH_DATABASE_URI=blank,
        DATABASE_URL=blank,
        DATABASE_URL_INTERNAL=blank,
        DATABASE_URL_LOCAL=blank,
        DATABASE_URL_REMOTE=blank,
    )
    assert primary_source(settings) is None
    assert candidates(settings) == []


# --- normalisation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scheme", ["postgres", "postgresql", "postgresql+psycopg2", "postgresql+asyncpg"]
)
def test_postgres_schemes_use_the_asyncpg_driver(scheme: str) -> None:
    url = normalise(f"{scheme}://app:pw@db:5432/app", "DATABASE_URL", connect_timeout=10)
    assert url.drivername == POSTGRES_DRIVER
    assert (url.username, url.password, url.host, url.port, url.database) == (
        "app",
        "pw",
        "db",
        5432,
        "app",
    )


@pytest.mark.parametrize("scheme", ["sqlite", "sqlite+pysqlite"])
def test_sqlite_uses_the_aiosqlite_driver_without_connect_timeout(scheme: str) -> None:
    url = normalise(f"{scheme}:///data/authkeep.db", "DATABASE_URL", connect_timeout=10)
    assert url.drivername == SQLITE_DRIVER
    assert url.database == "data/authkeep.db"
    assert "connect_timeout" not in url.query


def test_unsupported_scheme_is_config_error_without_password() -> None:
    with pytest.raises(ConfigError) as caught:
        normalise(f"mysql://app:{PASSWORD}@db/app", "DATABASE_URL", connect_timeout=10)
    assert "DATABASE_URL" in caught.value.detail
    assert "mysql" in caught.value.detail
    assert PASSWORD not in str(caught.value)


@pytest.mark.parametrize(
    "garbage",
    [
        f"this is not a url {PASSWORD}",
        f"app:{PASSWORD}@db:5432/app",
        # The classic mistake the error message itself warns about: an un-encoded '@' in the
        # password makes the rest of the password parse as the port.
        f"postgresql://app:p@ss:{PASSWORD}@db.example.com:5432/app",
        f"postgresql://app:{PASSWORD}@db.example.com:54x2/app",
    ],
)
def test_garbage_url_is_config_error_without_echoing_value(garbage: str) -> None:
    with pytest.raises(ConfigError) as caught:
        normalise(garbage, "AUTH_DATABASE_URI", connect_timeout=10)
    assert "AUTH_DATABASE_URI" in caught.value.detail
    assert PASSWORD not in str(caught.value)
    assert garbage not in str(caught.value)


def test_connect_timeout_is_added_when_absent() -> None:
    url = normalise("postgresql://app:pw@db/app", "DATABASE_URL", connect_timeout=7)
    assert url.query["connect_timeout"] == "7"


def test_connect_timeout_from_settings_is_used_by_the_chain(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = settings_from(
        monkeypatch, DATABASE_URL="postgresql://app:pw@db/app", AUTHKEEP_DB_CONNECT_TIMEOUT="4"
    )
    assert candidates(settings)[0].url.query["connect_timeout"] == "4"


def test_connect_timeout_in_the_dsn_is_kept() -> None:
    url = normalise(
        "postgresql://app:pw@db/app?connect_timeout=3", "DATABASE_URL", connect_timeout=10
    )
    assert url.query["connect_timeout"] == "3"


def test_sslmode_and_other_query_parameters_are_kept() -> None:
    url = normalise(
        "postgres://app:pw@db/app?sslmode=disable&application_name=billing",
        "DATABASE_URL",
        connect_timeout=10,
    )
    assert dict(url.query) == {
        "sslmode": "disable",
        "application_name": "billing",
        "connect_timeout": "10",
    }


# --- .internal / .flycast rewrite ------------------------------------------------------------


@pytest.mark.parametrize("host", ["pond-auth-db.internal", "pond-auth-db.flycast"])
def test_fly_private_host_is_rewritten_to_default_local_proxy_off_fly(
    monkeypatch: pytest.MonkeyPatch, host: str
) -> None:
    settings = settings_from(monkeypatch, DATABASE_URL=f"postgresql://app:pw@{host}:5432/auth")
    [candidate] = candidates(settings)
    assert (candidate.url.host, candidate.url.port) == ("localhost", 5432)
    assert candidate.rewritten is True


def test_rewrite_matches_hostname_case_and_trailing_dot(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_from(monkeypatch, DATABASE_URL="postgresql://app:pw@DB.Internal./auth")
    assert candidates(settings)[0].url.host == "localhost"


def test_rewrite_uses_the_configured_local_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_from(
        monkeypatch,
        DATABASE_URL="postgresql://app:pw@db.internal:5432/auth",
        AUTHKEEP_DB_LOCAL_PROXY="127.0.0.1:15432",
    )
    url = candidates(settings)[0].url
    assert (url.host, url.port) == ("127.0.0.1", 15432)


def test_fly_private_host_is_not_rewritten_on_fly(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_from(
        monkeypatch,
        DATABASE_URL="postgresql://app:pw@pond-auth-db.internal:5432/auth",
        FLY_APP_NAME="pond-auth",
    )
    [candidate] = candidates(settings)
    assert (candidate.url.host, candidate.url.port) == ("pond-auth-db.internal", 5432)
    assert candidate.rewritten is False


def test_fly_private_host_is_not_rewritten_when_switched_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = settings_from(
        monkeypatch,
        DATABASE_URL="postgresql://app:pw@pond-auth-db.internal:5432/auth",
        AUTHKEEP_DB_REWRITE_INTERNAL="false",
    )
    [candidate] = candidates(settings)
    assert candidate.url.host == "pond-auth-db.internal"
    assert candidate.rewritten is False


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://app:pw@db.example.com:6432/x.internal",
        "postgresql://a.internal:pw@db.example.com:6432/app",
        "postgresql://app:pw.internal@db.example.com:6432/app",
        "postgresql://app:pw@db.example.com:6432/app?application_name=x.flycast",
    ],
)
def test_internal_outside_the_hostname_leaves_host_untouched(
    monkeypatch: pytest.MonkeyPatch, dsn: str
) -> None:
    settings = settings_from(monkeypatch, DATABASE_URL=dsn)
    [candidate] = candidates(settings)
    assert (candidate.url.host, candidate.url.port) == ("db.example.com", 6432)
    assert candidate.rewritten is False


def test_rewrite_keeps_credentials_database_and_query(monkeypatch: pytest.MonkeyPatch) -> None:
    password = "p@ss/w:rd%"
    settings = settings_from(
        monkeypatch,
        DATABASE_URL=(
            f"postgres://auth_user:{quote(password, safe='')}@pond-auth-db.internal:5432/auth"
            "?sslmode=disable&connect_timeout=3"
        ),
    )
    url = candidates(settings)[0].url
    assert url.host == "localhost"
    assert (url.username, url.password, url.database) == ("auth_user", password, "auth")
    assert dict(url.query) == {"sslmode": "disable", "connect_timeout": "3"}


def test_ipv6_local_proxy_is_parsed_and_displayed_bracketed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = settings_from(
        monkeypatch,
        DATABASE_URL="postgresql://app:pw@db.internal/auth",
        AUTHKEEP_DB_LOCAL_PROXY="[::1]:6543",
    )
    [candidate] = candidates(settings)
    assert (candidate.url.host, candidate.url.port) == ("::1", 6543)
    assert candidate.display == "postgresql://[::1]:6543/auth"


@pytest.mark.parametrize(
    ("proxy", "expected"),
    [
        ("[::1]:6543", ("::1", 6543)),
        ("pgproxy", ("pgproxy", 5432)),
        ("pgproxy:15432", ("pgproxy", 15432)),
    ],
)
def test_local_proxy_forms(proxy: str, expected: tuple[str, int]) -> None:
    assert split_host_port(proxy) == expected


@pytest.mark.parametrize("proxy", ["localhost:abc", ":5432", "localhost:70000", "localhost:-1"])
def test_bad_local_proxy_is_config_error(proxy: str) -> None:
    with pytest.raises(ConfigError) as caught:
        split_host_port(proxy)
    assert "AUTHKEEP_DB_LOCAL_PROXY" in caught.value.detail


def test_bad_local_proxy_fails_when_the_chain_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_from(
        monkeypatch,
        DATABASE_URL="postgresql://app:pw@db.internal/auth",
        AUTHKEEP_DB_LOCAL_PROXY="localhost:abc",
    )
    with pytest.raises(ConfigError):
        candidates(settings)


# --- the fallback chain ----------------------------------------------------------------------


def test_chain_order_is_internal_local_primary_remote(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_from(
        monkeypatch,
        DATABASE_URL_REMOTE="postgresql://app:pw@remote-host/app",
        DATABASE_URL="postgresql://app:pw@primary-host/app",
        DATABASE_URL_LOCAL="postgresql://app:pw@local-host/app",
        DATABASE_URL_INTERNAL="postgresql://app:pw@internal-host/app",
    )
    assert [(c.source, c.url.host) for c in candidates(settings)] == [
        ("DATABASE_URL_INTERNAL", "internal-host"),
        ("DATABASE_URL_LOCAL", "local-host"),
        ("DATABASE_URL", "primary-host"),
        ("DATABASE_URL_REMOTE", "remote-host"),
    ]


def test_auth_database_uri_takes_the_primary_slot(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_from(
        monkeypatch,
        AUTH_DATABASE_URI="postgresql://app:pw@auth-host/app",
        DATABASE_URL_LOCAL="postgresql://app:pw@local-host/app",
        DATABASE_URL_REMOTE="postgresql://app:pw@remote-host/app",
    )
    assert sources(settings) == ["DATABASE_URL_LOCAL", "AUTH_DATABASE_URI", "DATABASE_URL_REMOTE"]


def test_duplicate_urls_are_probed_once_with_the_first_source(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = settings_from(
        monkeypatch,
        DATABASE_URL="postgresql://app:pw@db.example.com/app",
        DATABASE_URL_REMOTE="postgresql://app:pw@db.example.com/app",
    )
    assert sources(settings) == ["DATABASE_URL"]


def test_urls_equal_after_normalisation_are_duplicates(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_from(
        monkeypatch,
        DATABASE_URL="postgres://app:pw@db.example.com/app",
        DATABASE_URL_REMOTE="  postgresql://app:pw@db.example.com/app  ",
    )
    assert sources(settings) == ["DATABASE_URL"]


def test_internal_url_rewritten_to_the_local_url_is_a_duplicate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = settings_from(
        monkeypatch,
        DATABASE_URL_INTERNAL="postgresql://app:pw@pond-auth-db.internal:5432/auth",
        DATABASE_URL_LOCAL="postgresql://app:pw@localhost:5432/auth",
    )
    [candidate] = candidates(settings)
    assert (candidate.source, candidate.rewritten) == ("DATABASE_URL_INTERNAL", True)


def test_same_host_with_different_password_is_not_a_duplicate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = settings_from(
        monkeypatch,
        DATABASE_URL="postgresql://app:old@db.example.com/app",
        DATABASE_URL_REMOTE="postgresql://app:new@db.example.com/app",
    )
    assert sources(settings) == ["DATABASE_URL", "DATABASE_URL_REMOTE"]


def test_admin_url_is_not_part_of_the_chain(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_from(
        monkeypatch,
        DATABASE_URL="postgresql://app:pw@db/app",
        DATABASE_URL_ADMIN="postgresql://owner:pw@db/app",
    )
    assert sources(settings) == ["DATABASE_URL"]


# --- display and password encoding -----------------------------------------------------------

SPECIAL_PASSWORDS = ["p@ss", "a/b", "100%", "x:y", "p@ss/w:rd%25", "?#&= +"]


@pytest.mark.parametrize("password", SPECIAL_PASSWORDS)
def test_display_url_never_contains_user_or_password(password: str) -> None:
    url = normalise(
        f"postgresql://billing_owner:{quote(password, safe='')}@db.example.com:6432/billing",
        "DATABASE_URL",
        connect_timeout=10,
    )
    shown = display_url(url)
    assert shown == "postgresql://db.example.com:6432/billing"
    assert "billing_owner" not in shown


@pytest.mark.parametrize("password", SPECIAL_PASSWORDS)
def test_encoded_password_decodes_to_the_original(password: str) -> None:
    url = normalise(
        f"postgresql://app:{quote(password, safe='')}@db.example.com/app",
        "DATABASE_URL",
        connect_timeout=10,
    )
    assert url.password == password


def test_display_url_brackets_ipv6_hosts() -> None:
    url = normalise("postgresql://app:pw@[2001:db8::1]:6432/app", "DATABASE_URL", connect_timeout=1)
    assert url.host == "2001:db8::1"
    assert display_url(url) == "postgresql://[2001:db8::1]:6432/app"


def test_display_url_shows_default_port() -> None:
    url = normalise("postgresql://app:pw@db.example.com/app", "DATABASE_URL", connect_timeout=1)
    assert display_url(url) == "postgresql://db.example.com:5432/app"


def test_display_url_for_sqlite_shows_the_file() -> None:
    url = normalise("sqlite:////srv/authkeep/data/authkeep.db", "DATABASE_URL", connect_timeout=1)
    assert display_url(url) == "sqlite:////srv/authkeep/data/authkeep.db"


# --- DATABASE_URL_ADMIN ----------------------------------------------------------------------


def test_admin_url_is_none_when_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_from(monkeypatch, DATABASE_URL="postgresql://app:pw@db/app")
    assert admin_url(settings) is None


def test_blank_admin_url_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_from(monkeypatch, DATABASE_URL_ADMIN="  ")
    assert admin_url(settings) is None


def test_admin_url_is_normalised(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_from(
        monkeypatch, DATABASE_URL_ADMIN="postgres://owner:o%40wn@db.example.com/app"
    )
    admin = admin_url(settings)
    assert admin is not None
    assert admin.source == "DATABASE_URL_ADMIN"
    assert admin.url.drivername == POSTGRES_DRIVER
    assert admin.url.password == "o@wn"
    assert admin.url.query["connect_timeout"] == "10"
    assert admin.display == "postgresql://db.example.com:5432/app"


def test_admin_url_internal_host_is_rewritten_off_fly(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_from(
        monkeypatch, DATABASE_URL_ADMIN="postgresql://owner:pw@pg.internal/app"
    )
    admin = admin_url(settings)
    assert admin is not None
    assert (admin.url.host, admin.url.port, admin.rewritten) == ("localhost", 5432, True)
    assert (admin.url.username, admin.url.password, admin.url.database) == ("owner", "pw", "app")


def test_admin_url_internal_host_is_kept_on_fly(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_from(
        monkeypatch,
        DATABASE_URL_ADMIN="postgresql://owner:pw@pg.internal/app",
        FLY_APP_NAME="pond-auth",
    )
    admin = admin_url(settings)
    assert admin is not None
    assert (admin.url.host, admin.rewritten) == ("pg.internal", False)


def test_invalid_admin_url_is_config_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_from(monkeypatch, DATABASE_URL_ADMIN=f"oracle://owner:{PASSWORD}@db/app")
    with pytest.raises(ConfigError) as caught:
        admin_url(settings)
    assert "DATABASE_URL_ADMIN" in caught.value.detail
    assert PASSWORD not in str(caught.value)


# --- properties ------------------------------------------------------------------------------

_PRINTABLE_PASSWORDS = st.text(
    alphabet=st.one_of(
        st.sampled_from(string.printable + "@/%:?#"),
        st.characters(exclude_categories=("Cs", "Cc")),
    ),
    min_size=1,
    max_size=40,
)
_HOST_DB_SCHEME_TEXT = "postgresql://db.example.com:5432/app postgresql+asyncpg app"


@hypothesis_settings(max_examples=300, deadline=None)
@given(password=_PRINTABLE_PASSWORDS)
def test_any_encoded_password_round_trips_and_is_never_displayed(password: str) -> None:
    url = normalise(
        f"postgresql://app:{quote(password, safe='')}@db.example.com/app",
        "DATABASE_URL",
        connect_timeout=10,
    )
    assert url.password == password
    shown = display_url(url)
    assert shown == "postgresql://db.example.com:5432/app"
    if len(password) >= 4 and password not in _HOST_DB_SCHEME_TEXT:
        assert password not in shown


@hypothesis_settings(max_examples=200, deadline=None)
@given(password=_PRINTABLE_PASSWORDS)
def test_any_encoded_password_survives_the_local_proxy_rewrite(password: str) -> None:
    url = normalise(
        f"postgresql://app:{quote(password, safe='')}@pg.internal/app?sslmode=disable",
        "DATABASE_URL",
        connect_timeout=10,
    )
    rewritten = rewrite_for_local_proxy(url, "localhost:5432")
    assert (rewritten.host, rewritten.password, rewritten.database) == (
        "localhost",
        password,
        "app",
    )
    assert rewritten.query["sslmode"] == "disable"


def test_unencoded_at_in_password_is_refused_without_echoing_it() -> None:
    """`p@ss` unencoded would make SQLAlchemy read host `ss`: refuse instead of guessing."""
    with pytest.raises(ConfigError) as failure:
        normalise(
            "postgresql://app:p@ss/w%rd:1@db.example.com/app", "DATABASE_URL", connect_timeout=10
        )
    assert "URL-encoded" in failure.value.detail
    assert "p@ss" not in failure.value.detail
