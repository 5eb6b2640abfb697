"""What the client raises. Both mean "no answer": a caller must never treat either as a valid key
or a signed-in session (fail closed)."""

from __future__ import annotations


class AuthkeepClientError(Exception):
    """Base of the client's errors."""


class AuthkeepUnavailable(AuthkeepClientError):
    """authkeep could not answer: connection refused, timeout, a 5xx, a 429 on authkeep's own
    API limits, or an answer that is not what authkeep sends. `retry_after` (seconds) is set
    when authkeep said when to come back."""

    def __init__(self, detail: str, *, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after


class AuthkeepRejected(AuthkeepClientError):
    """authkeep refused the request itself (a 4xx such as a malformed permissions expression):
    the call is wrong, not the key. `error` and `detail` are authkeep's error body."""

    def __init__(self, status_code: int, error: str, detail: str) -> None:
        super().__init__(f"authkeep refused the request: HTTP {status_code} {error}: {detail}")
        self.status_code = status_code
        self.error = error
        self.detail = detail
