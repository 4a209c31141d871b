"""One error module, ordered by what the caller should do.

- :class:`TransientError`: retry later (connection errors, timeouts, 429, 5xx >= 501,
  non-JSON bodies). ``retry_after_s`` carries the server's ``Retry-After`` or the
  client's suggested delay.
- :class:`PermanentError`: give up on this item (dead-letter it, tell the user),
  carry on with the others (other 4xx, ServiceNow's ``error.message`` / ``detail``).
- :class:`FatalError`: stop (credentials refused, bad configuration).

Clients classify every HTTP outcome into one of these in a single function per client;
apart from throttling (a 429, and a read's transient failure, sent again after a pause:
:mod:`sync.clients.pacing`) they never retry, and the executor decides what to do.
"""

from __future__ import annotations


class BpsyncError(Exception):
    """Base of every error bpsync raises on purpose. ``str()`` is one operator-readable line."""


class ConfigError(BpsyncError):
    """A setting is missing or invalid; ``setting`` names it (dotted, e.g. ``servicenow.url``)."""

    def __init__(self, message: str, *, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting


class StoreError(BpsyncError):
    """The link store cannot be used (unreachable, old schema, locked by another daemon)."""


class GuardTripped(BpsyncError):  # noqa: N818 - it is an event, not a failure of bpsync
    """A safety guard stopped the cycle; an operator must confirm with ``bpsync run --force``."""

    def __init__(self, guard: str, message: str) -> None:
        super().__init__(f"guard {guard}: {message}")
        self.guard = guard


class ApiError(BpsyncError):
    """A call to ServiceNow or BigPanda failed.

    ``side`` is ``"servicenow"`` or ``"bigpanda"``; ``status`` the HTTP status (None for
    transport errors); ``message`` and ``detail`` the vendor's own words when it gave some.
    """

    def __init__(
        self,
        side: str,
        message: str,
        *,
        status: int | None = None,
        detail: str | None = None,
        method: str | None = None,
        url: str | None = None,
    ) -> None:
        self.side = side
        self.message = message
        self.status = status
        self.detail = detail
        self.method = method
        self.url = url
        super().__init__(self._line())

    def _line(self) -> str:
        where = f"{self.method} {self.url}: " if self.method and self.url else ""
        status = f"HTTP {self.status}: " if self.status is not None else ""
        detail = f" ({self.detail})" if self.detail else ""
        return f"{self.side}: {where}{status}{self.message}{detail}"


class TransientError(ApiError):
    """Worth retrying later; ``retry_after_s`` is the earliest sensible retry, if known."""

    def __init__(
        self,
        side: str,
        message: str,
        *,
        retry_after_s: float | None = None,
        status: int | None = None,
        detail: str | None = None,
        method: str | None = None,
        url: str | None = None,
    ) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(side, message, status=status, detail=detail, method=method, url=url)


class PermanentError(ApiError):
    """Will fail the same way again: give up on this item, tell the user, go on."""


class NotFoundError(PermanentError):
    """The record does not exist (HTTP 404, or an unknown sys_id / incident id)."""


class MissingTagError(PermanentError):
    """BigPanda refused a tag write because the tag is not defined (404 ``NotExistTag``)."""


class FatalError(ApiError):
    """Nothing will work until an operator acts (HTTP 401/403 on authentication)."""
