"""Looking up the people of a pair whose assignee moved, before it is planned.

The coordinator's step for ``incidents.sync_assignee`` (:mod:`sync.assignment` decides;
this module only reads): :func:`sync.assignment.assignees` compares each side's assignee
id with the last synced one, which needs no request; only a side that moved has its
person looked up, by e-mail, through cached look-ups:

- BigPanda's assignee: its e-mail as the incident carries it (``assignee.email``), else
  the SCIM user (``GET /scim/Users/{id}``); then the ``sys_user`` with that e-mail
  (:meth:`sync.lookups.Lookups.resolve`: none or two are "not matched", one warning);
- ServiceNow's ``assigned_to``: the ``sys_user``'s e-mail
  (:meth:`~sync.lookups.Lookups.value_of`), then the BigPanda user with it (SCIM
  ``filter=userName eq``, :class:`sync.people.BigPandaUsers`).

An idle cycle plans no pair, and a pair whose assignees did not move reads nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from sync.actions import RefLookup
from sync.assignment import assignees
from sync.constants import Side
from sync.lookups import Lookups
from sync.model import AssigneeInput, BPIncident, FieldState, Link, LinkState, SNIncident
from sync.people import BigPandaUsers
from sync.settings import Settings

# the cycle's lines stay on "sync.coordinator", wherever the code lives
log = logging.getLogger("sync.coordinator")

#: the ServiceNow table and column people are matched by
USER_TABLE = "sys_user"
EMAIL_COLUMN = "email"


class AssigneeReads:
    """The coordinator's assignee look-ups (see the module docstring)."""

    def __init__(self, settings: Settings, users: BigPandaUsers, lookups: Lookups) -> None:
        self._enabled = settings.incidents.sync_assignee
        self._users = users
        self._lookups = lookups
        self._warned: set[str] = set()

    async def read(
        self,
        link: Link | None,
        bp: BPIncident | None,
        sn: SNIncident | None,
        synced: Mapping[tuple[Side, str], FieldState],
    ) -> AssigneeInput | None:
        """The counterparts of a linked pair's moved assignees (None: ``sync_assignee``
        is off, the pair is not linked, or nothing moved)."""
        if not self._enabled or link is None or link.state is not LinkState.LINKED:
            return None
        now = assignees(bp, sn, synced)
        if not now.moved:
            return None
        sn_for_bp: str | None = None
        bp_for_sn: str | None = None
        bp_email = sn_email = ""
        if now.bp_moved:
            if now.bp_now is None:
                sn_for_bp = ""  # unassigned in BigPanda: assigned_to is cleared
            else:
                bp_email = await self._bigpanda_email(bp, now.bp_now) or ""
                if bp_email:
                    sn_for_bp = await self._lookups.resolve(
                        RefLookup(USER_TABLE, EMAIL_COLUMN, bp_email)
                    )
        if now.sn_moved:
            if now.sn_now is None:
                bp_for_sn = ""  # assigned_to cleared: the BigPanda incident is unassigned
            else:
                sn_email = await self._lookups.value_of(USER_TABLE, now.sn_now, EMAIL_COLUMN) or ""
                user = await self._users.by_email(sn_email) if sn_email else None
                bp_for_sn = user.id if user is not None else None
        return AssigneeInput(
            sn_for_bp=sn_for_bp, bp_for_sn=bp_for_sn, bp_email=bp_email, sn_email=sn_email
        )

    async def _bigpanda_email(self, bp: BPIncident | None, user_id: str) -> str | None:
        if bp is not None and bp.assignee_id == user_id and bp.assignee_email:
            return bp.assignee_email  # the incident names it: no request
        user = await self._users.by_id(user_id)
        if user is None or not user.email:
            if user_id not in self._warned:
                self._warned.add(user_id)
                log.warning(
                    "BigPanda user %s not found; ServiceNow's assigned_to is left as it is",
                    user_id,
                )
            return None
        return user.email


__all__ = ["AssigneeReads"]
