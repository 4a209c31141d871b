"""BigPanda users by e-mail and by id, through the SCIM Users API, cached.

Contract (docs/bigpanda-api.md 4.7):

- :meth:`BigPandaUsers.by_email` asks ``find_user`` (``filter=userName eq "<e-mail>"``,
  one request); exactly one active user is a match. None (no user, a deactivated one,
  several) means "not found": the caller leaves the other side as it is, and ONE
  warning per e-mail is logged for the life of the process.
- :meth:`BigPandaUsers.by_id` asks ``get_user`` (one request): an activity or an
  incident names its user by id only; an unknown id is None, no warning (a user
  removed since).
- Answers, misses included, are kept for ``ttl_s`` (the injected clock's monotonic
  time); a user found one way is cached both ways. An idle cycle asks nothing: only
  pairs whose assignee moved, and comments to carry, look people up.
- A refusal of the query itself (a malformed answer) counts as not found, with one
  warning. A key without the User Management permission (a 403: the client's
  PermanentError) is logged once and no user is looked up for ``ttl_s``: assignees are
  not matched and comment authors keep their ids meanwhile, the sync goes on.
  Transient and fatal errors propagate like any other read's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sync.clients.base import BigPandaAPI, BPUser
from sync.clock import Clock
from sync.errors import NotFoundError, PermanentError
from sync.lookups import DEFAULT_LOOKUP_TTL_S

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Cached:
    user: BPUser | None
    expires_at_mono_s: float


class BigPandaUsers:
    """Cached BigPanda users (see the module docstring)."""

    def __init__(
        self, bigpanda: BigPandaAPI, clock: Clock, *, ttl_s: float = DEFAULT_LOOKUP_TTL_S
    ) -> None:
        self._bp = bigpanda
        self._clock = clock
        self._ttl_s = ttl_s
        self._by_email: dict[str, _Cached] = {}
        self._by_id: dict[str, _Cached] = {}
        self._warned: set[str] = set()
        self._refused_until_mono_s = float("-inf")
        """SCIM refused (403): no look-up before this (monotonic s)"""

    def _refused(self, exc: PermanentError) -> bool:
        """A 403: remember it for the TTL, warn once; other refusals are per user."""
        if exc.status != 403:
            return False
        self._refused_until_mono_s = self._clock.monotonic() + self._ttl_s
        self._warn("$scim", "%s; BigPanda users are not looked up for %d s", exc, self._ttl_s)
        return True

    def _blocked(self) -> bool:
        return self._clock.monotonic() < self._refused_until_mono_s

    def _fresh(self, cache: dict[str, _Cached], key: str) -> _Cached | None:
        cached = cache.get(key)
        if cached is not None and cached.expires_at_mono_s > self._clock.monotonic():
            return cached
        return None

    def _keep(self, email: str | None, user_id: str | None, user: BPUser | None) -> None:
        entry = _Cached(user, self._clock.monotonic() + self._ttl_s)
        if email:
            self._by_email[email.lower()] = entry
        if user_id:
            self._by_id[user_id] = entry
        if user is not None:
            self._by_email[user.email.lower()] = entry
            self._by_id[user.id] = entry

    def _warn(self, key: str, message: str, *args: object) -> None:
        if key in self._warned:
            return
        self._warned.add(key)
        log.warning(message, *args, extra={"email_or_id": key})

    async def by_email(self, email: str) -> BPUser | None:
        """The one active BigPanda user with this e-mail, or None (one warning)."""
        key = email.strip().lower()
        cached = self._fresh(self._by_email, key)
        if cached is not None:
            return cached.user
        if self._blocked():
            return None
        try:
            users = await self._bp.find_user(email.strip())
        except PermanentError as exc:
            if not self._refused(exc):
                self._warn(key, "BigPanda user %r not looked up: %s; left as it is", email, exc)
                self._keep(key, None, None)
            return None
        active = [u for u in users if u.active]
        user = active[0] if len(active) == 1 else None
        if user is None:
            problem = (
                "no active BigPanda user has this e-mail"
                if not active
                else "several BigPanda users have this e-mail"
            )
            self._warn(key, "BigPanda user %r: %s; left as it is", email, problem)
        self._keep(key, None, user)
        return user

    async def by_id(self, user_id: str) -> BPUser | None:
        """The BigPanda user with this id, or None (unknown, or not readable)."""
        cached = self._fresh(self._by_id, user_id)
        if cached is not None:
            return cached.user
        if self._blocked():
            return None
        user: BPUser | None = None
        try:
            user = await self._bp.get_user(user_id)
        except NotFoundError:
            log.debug("BigPanda user %s not found", user_id)
        except PermanentError as exc:
            if self._refused(exc):
                return None
            self._warn(user_id, "BigPanda user %s not read: %s", user_id, exc)
        self._keep(None, user_id, user)
        return user

    async def display(self, user_id: str) -> str:
        """How a person reads the user: the name, else the e-mail, else the id itself."""
        if not user_id:
            return ""
        user = await self.by_id(user_id)
        if user is None:
            return user_id
        return user.name or user.email or user_id


__all__ = ["BigPandaUsers"]
