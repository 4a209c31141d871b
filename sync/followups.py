"""What a plan does after a ServiceNow write (pure): the link tag and B14.

The planner attaches these to the writes it plans (:mod:`sync.planner`); the executor
runs them after the write, filling in only what the write's result gives (the new
incident's number and URL, ServiceNow's refusal message) and nothing it decides:

- after a create, or a pending link recovered by adoption (B2): the link tag := the
  ServiceNow number and URL (SPEC B1);
- after any ServiceNow write that succeeds while the link tag says ``error``: the tag
  back to the number and URL (B14, the way back);
- once a ServiceNow write is refused for good: a BigPanda comment with ServiceNow's
  message and the link tag := ``error`` (B14, the seed's error communication); the
  comment starts with the mirror marker, so journals never carry it back.

A follow-up's environment ``""`` means "the incident's environment as the executor
knows it" (a pair planned from its ServiceNow side alone may not know it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sync.actions import (
    CarryEntryToServiceNow,
    CommentBigPanda,
    CreateServiceNowIncident,
    FollowUp,
    ReopenServiceNow,
    ResolveBigPanda,
    ResolveServiceNow,
    SetLinkTag,
    UpdateBigPandaTags,
    UpdateServiceNowFields,
)
from sync.constants import LINK_TAG_ERROR_VALUE, MIRROR_MARKER

if TYPE_CHECKING:
    from sync.settings import Settings

__all__ = [
    "ServiceNowWrite",
    "after_adoption",
    "after_create",
    "after_servicenow_write",
    "on_refusal",
    "steps_after",
    "supersedes",
]

ServiceNowWrite = (
    CreateServiceNowIncident
    | UpdateServiceNowFields
    | ResolveServiceNow
    | ReopenServiceNow
    | CarryEntryToServiceNow
)


def after_create(bp_incident_id: str, environment_id: str, settings: Settings) -> SetLinkTag:
    """The link tag of a new (or adopted) ServiceNow incident: its number and URL."""
    return SetLinkTag(bp_incident_id, environment_id, settings.incidents.link_tag, None)


def after_adoption(
    bp_incident_id: str, environment_id: str | None, link_id: int, settings: Settings
) -> tuple[FollowUp, ...]:
    """A pending link recovered by adopting the incident its create made (B2): the link
    tag, as after a create; none when the incident's environment is not known (a tag
    write needs it)."""
    if not environment_id:
        return ()
    tag = settings.incidents.link_tag
    return (SetLinkTag(bp_incident_id, environment_id, tag, None, link_id=link_id),)


def after_servicenow_write(
    bp_incident_id: str, environment_id: str, link_id: int | None, settings: Settings
) -> tuple[FollowUp, ...]:
    """B14, the way back: a success sets a link tag that says ``error`` back to the
    link's number and URL (only then: the tag is read when the write succeeds)."""
    tag = settings.incidents.link_tag
    return (SetLinkTag(bp_incident_id, environment_id, tag, None, link_id, only_after_error=True),)


def on_refusal(
    bp_incident_id: str, environment_id: str, kind: str, link_id: int | None, settings: Settings
) -> tuple[FollowUp, ...]:
    """B14: ServiceNow refused the write for good -> tell the BigPanda user (the refusal
    appended to the comment) and mark the link tag ``error``."""
    tag = settings.incidents.link_tag
    return (
        CommentBigPanda(
            bp_incident_id,
            environment_id,
            f"{MIRROR_MARKER} ServiceNow refused the {kind} write",
            link_id=link_id,
            with_error=True,
        ),
        SetLinkTag(bp_incident_id, environment_id, tag, LINK_TAG_ERROR_VALUE, link_id),
    )


def steps_after(
    action: ServiceNowWrite, settings: Settings, *, refused: bool
) -> tuple[FollowUp, ...]:
    """The steps that follow ``action``: its plan's ``on_refused`` or ``on_success``.

    A write planned before plans carried their follow-ups (an outbox item of an earlier
    version) has none: the same rules above give them, so an upgrade loses no link tag
    and no B14 comment."""
    steps = action.on_refused if refused else action.on_success
    if steps:
        return steps
    bp_id = action.bp_incident_id
    link_id = None if isinstance(action, CreateServiceNowIncident) else action.link_id
    if refused:
        return on_refusal(bp_id, "", action.kind, link_id, settings)
    if isinstance(action, CreateServiceNowIncident):
        return (after_create(bp_id, action.environment_id, settings),)
    return after_servicenow_write(bp_id, "", link_id, settings)


def supersedes(later: object, dead: object) -> bool:
    """Does the write ``later`` (sent successfully, to the same target) make the dead
    write ``dead`` pointless? Then the dead letter is closed, not left for a person:
    a field update covering the same fields, a tag write covering the same tags, the
    same resolve, reopen, create or link tag. A comment or a journal entry is never
    superseded (each is a message of its own)."""
    if type(later) is not type(dead):
        return False
    if isinstance(dead, UpdateServiceNowFields) and isinstance(later, UpdateServiceNowFields):
        return {*dead.fields, *dead.lookups} <= {*later.fields, *later.lookups}
    if isinstance(dead, UpdateBigPandaTags) and isinstance(later, UpdateBigPandaTags):
        return {*dead.tags, *dead.remove_tags} <= {*later.tags, *later.remove_tags}
    if isinstance(dead, SetLinkTag) and isinstance(later, SetLinkTag):
        return dead.tag_id == later.tag_id
    return isinstance(
        dead, CreateServiceNowIncident | ResolveServiceNow | ResolveBigPanda | ReopenServiceNow
    )
