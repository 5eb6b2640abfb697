"""API keys: issue, store as a keyed hash, manage, and verify on the hot path (SPEC §7)."""
