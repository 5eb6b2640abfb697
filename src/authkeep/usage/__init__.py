"""Usage metering: batched, atomic counts of verifications per key, owner, outcome and time."""
