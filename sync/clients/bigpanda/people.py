"""BigPanda's assignment and SCIM Users calls, mixed into
:class:`~sync.clients.bigpanda.client.BigPandaClient` (its transport, pacing and
classification; contract in that module's docstring).

- ``assignment``: ``PUT .../incidents/{id}/assignment {"assignee": "<user id>"}`` (204);
  ``DELETE`` (204; BigPanda's documented 400 when the incident is not assigned: False).
- ``users``, ``user``: the SCIM Users API (docs 4.7, SCIM 1.1 although the URL says
  v2.0): ``GET /resources/v2.0/scim/Users?filter=userName eq "<e-mail>"`` and
  ``GET .../scim/Users/{id}`` (404: :class:`~sync.errors.NotFoundError`), each route
  paced at its own 2 requests per second (``paths.FAMILY_CEILINGS_PER_S``). A 403
  there means the API key's user lacks the User Management (or Users_Read) permission
  for this API only: a :class:`~sync.errors.PermanentError` (the caller does without
  the look-up), not the :class:`~sync.errors.FatalError` a 403 is elsewhere.
"""

from __future__ import annotations

from sync.clients.base import BPUser
from sync.clients.bigpanda.calls import Transport
from sync.clients.bigpanda.parsing import parse_scim_list, parse_scim_user
from sync.clients.bigpanda.paths import (
    ASSIGNMENT_PATH,
    SCIM_USER_PATH,
    SCIM_USERS_PATH,
    SIDE,
    Family,
    _segment,
)
from sync.errors import FatalError, PermanentError


class PeopleCalls:
    """Assignment and SCIM Users (see the module docstring)."""

    async def assign_incident(
        self: Transport, environment_id: str, incident_id: str, user_id: str
    ) -> None:
        """``PUT .../assignment {"assignee": user_id}`` (204)."""
        path = self._incident_path(ASSIGNMENT_PATH, environment_id, incident_id)
        body = {"assignee": _segment(user_id, "user id")}
        await self._request(Family.ASSIGNMENT, "PUT", ASSIGNMENT_PATH, path, json_body=body)

    async def unassign_incident(self: Transport, environment_id: str, incident_id: str) -> bool:
        """``DELETE .../assignment``: True on 204, False on BigPanda's documented 400
        (the incident is not assigned: nothing to do)."""
        path = self._incident_path(ASSIGNMENT_PATH, environment_id, incident_id)
        try:
            await self._request(Family.ASSIGNMENT, "DELETE", ASSIGNMENT_PATH, path)
        except PermanentError as exc:
            if exc.status != 400:
                raise
            return False
        return True

    async def find_user(self: Transport, email: str) -> list[BPUser]:
        """SCIM ``GET /scim/Users?filter=userName eq "<email>"`` (docs 4.7)."""
        if not email or '"' in email or "\\" in email:
            raise PermanentError(SIDE, f"invalid e-mail for a SCIM filter: {email!r}")
        params = {"filter": f'userName eq "{email}"'}
        try:
            parsed = await self._request(
                Family.USERS, "GET", SCIM_USERS_PATH, SCIM_USERS_PATH, params=params
            )
        except FatalError as exc:
            raise _scim_refused(exc) from None
        return parse_scim_list(parsed.body)

    async def get_user(self: Transport, user_id: str) -> BPUser:
        """SCIM ``GET /scim/Users/{id}``; NotFoundError for an unknown id."""
        path = SCIM_USER_PATH.format(user_id=_segment(user_id, "user id"))
        try:
            parsed = await self._request(Family.USER, "GET", SCIM_USER_PATH, path)
        except FatalError as exc:
            raise _scim_refused(exc) from None
        return parse_scim_user(parsed.body)


def _scim_refused(exc: FatalError) -> FatalError | PermanentError:
    """A 403 of the SCIM Users API: a missing permission for users only (see above)."""
    if exc.status != 403:
        return exc
    return PermanentError(
        SIDE,
        "SCIM Users API refused (HTTP 403): the user of bigpanda.api_key needs the User "
        "Management (or Users_Read) permission",
        status=403,
        method=exc.method,
        url=exc.url,
    )


__all__ = ["PeopleCalls"]
