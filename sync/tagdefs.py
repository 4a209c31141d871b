"""Tags that exist: the BigPanda tag definitions bpsync writes (issue: fields, item 2-3).

A BigPanda tag must be *defined* before an incident can carry it (docs 4.5: setting an
undefined tag is a 404 ``NotExistTag``); a fresh organisation has only the built-in
``priority``. bpsync writes the link tag and every tag a ``sn_to_bp``/``both`` row
writes, so at start-up it reads the definitions and:

- creates each missing one as a ``Text`` tag (idempotent: one already there is kept);
- refuses (:class:`~sync.errors.ConfigError`, one line per row) a row that writes a tag
  of a type bpsync cannot write (``MultiValue``, ``ClosedList...``), an inactive tag,
  or the ``Priority`` tag with values outside its ordered list. BigPanda's built-in
  ``priority`` is written only through a ``value_map`` whose BigPanda values are its
  levels (e.g. ``P1``-``P5``); a row without one is refused by the settings already.

:func:`plan_definitions` is pure (definitions and settings in, the plan out);
:func:`ensure_tag_definitions` reads and creates through the client.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sync.clients.base import BigPandaAPI, BPTagDefinition
from sync.errors import ConfigError, PermanentError
from sync.mapping import PRIORITY_TAG, compile_rules

if TYPE_CHECKING:
    from sync.settings import Settings

log = logging.getLogger(__name__)

__all__ = ["TagPlan", "ensure_tag_definitions", "plan_definitions", "written_tags"]

#: the one tag type whose values are free text
TEXT = "Text"
PRIORITY = "Priority"


def written_tags(settings: Settings) -> dict[str, list[int]]:
    """Tag id -> the mapping rows (indexes) that write it; the link tag with none."""
    tags: dict[str, list[int]] = {settings.incidents.link_tag: []}
    by_tag = {rule.tag: rule for rule in compile_rules(settings) if rule.to_bigpanda}
    for index, row in enumerate(settings.tag_mapping):
        if row.bigpanda_tag in by_tag and row.direction in ("sn_to_bp", "both"):
            tags.setdefault(row.bigpanda_tag, []).append(index)
    return tags


@dataclass(frozen=True, slots=True)
class TagPlan:
    """What start-up finds: tags that exist, tags to create, rows it cannot honour."""

    existing: list[str] = field(default_factory=list)
    to_create: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def plan_definitions(settings: Settings, definitions: Sequence[BPTagDefinition]) -> TagPlan:
    """The tags bpsync writes against the organisation's definitions (pure)."""
    by_id = {d.id: d for d in definitions}
    plan = TagPlan()
    for tag, rows in written_tags(settings).items():
        where = f"tag_mapping[{rows[0]}] ({tag})" if rows else f"incidents.link_tag ({tag})"
        found = by_id.get(tag)
        if found is None:
            plan.to_create.append(tag)
            continue
        plan.existing.append(tag)
        if not found.active:
            plan.problems.append(f"{where}: the BigPanda tag {tag} is inactive; activate it")
        elif found.type == PRIORITY and tag == PRIORITY_TAG and rows:
            levels = set(found.ordered_list)
            for index in rows:
                values = settings.tag_mapping[index].value_map or {}
                stray = sorted(v for v in values if levels and v not in levels)
                if stray:
                    plan.problems.append(
                        f"tag_mapping[{index}] ({tag}): {', '.join(stray)} "
                        f"{'is' if len(stray) == 1 else 'are'} not a level of the Priority "
                        f"tag {tag} ({', '.join(found.ordered_list)})"
                    )
        elif found.type != TEXT:
            plan.problems.append(
                f"{where}: the BigPanda tag {tag} is of type {found.type or 'unknown'}; "
                "bpsync writes Text tags (and the built-in priority through a value_map)"
            )
    return plan


async def ensure_tag_definitions(
    bigpanda: BigPandaAPI, settings: Settings, *, dry_run: bool = False
) -> TagPlan:
    """Read the definitions, refuse what cannot be written (ConfigError, every problem),
    create the missing Text tags (``dry_run``: only say so). Returns the plan as found.

    Idempotent, and safe beside another replica doing the same: a create refused
    because the tag exists by now counts as done."""
    plan = plan_definitions(settings, await bigpanda.list_tag_definitions())
    if plan.problems:
        raise ConfigError("; ".join(plan.problems))
    for tag in plan.to_create:
        if dry_run:
            log.info("BigPanda tag %s is not defined; bpsync would define it (Text)", tag)
            continue
        try:
            await bigpanda.create_tag_definition(
                tag, tag_type=TEXT, description="written by bpsync (ServiceNow sync)"
            )
        except PermanentError:
            if tag not in {d.id for d in await bigpanda.list_tag_definitions()}:
                raise
        log.info("BigPanda tag %s defined (Text): bpsync writes it", tag)
    return plan
