"""The plans tests reuse the identity and admin test helpers (tests/users, tests/admin) rather
than copying them; pytest puts only each test file's own directory on sys.path."""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
for helpers in ("users", "admin"):
    path = str(TESTS / helpers)
    if path not in sys.path:
        sys.path.insert(0, path)
