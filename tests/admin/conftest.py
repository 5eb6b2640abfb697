"""The admin MFA tests enrol TOTP with the MFA test helpers (tests/mfa/mfa_helpers.py), which
import the identity helpers by their bare name; pytest puts only each test file's own
directory on sys.path."""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
for folder in ("users", "mfa"):
    path = str(TESTS / folder)
    if path not in sys.path:
        sys.path.insert(0, path)
