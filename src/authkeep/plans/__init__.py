"""Plans, subscriptions, entitlements, plan quotas and threshold webhooks (SPEC §7)."""
