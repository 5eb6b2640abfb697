"""The MFA tests reuse the identity test helpers (tests/users/identity_helpers.py) rather than
copying them; pytest puts only each test file's own directory on sys.path."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

USERS_TESTS = str(Path(__file__).resolve().parents[1] / "users")
if USERS_TESTS not in sys.path:
    sys.path.insert(0, USERS_TESTS)


@pytest.fixture
def code_watch() -> Iterator[Any]:
    """Collects the TOTP codes a test uses; fails the test if any was logged meanwhile."""
    from mfa_helpers import CodeWatch

    watch = CodeWatch()
    yield watch
    assert watch.leaks() == []
