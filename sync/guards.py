"""Guards against mass change (style.md item 4): refuse to act when a side looks wrong.

Two guards, each raising :class:`~sync.errors.GuardTripped` with its name:

- ``empty_side``: a side that suddenly shows nothing while at least ``guard.min_links``
  live links exist. "Nothing" is a listing that cannot legitimately be empty when links
  exist: BigPanda's environment list, or a *full* listing (a poll without a cursor).
  An incremental poll that returns nothing is normal and never trips it.
- ``mass_resolve``: the cycle's plans would resolve (either side) more than
  ``guard.max_resolve_fraction`` of the live links, with at least ``guard.min_links``
  live links.

Both only look at data; the coordinator decides what to skip (every write of the cycle,
cursors not advanced) and whether ``--force`` overrides.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sync.actions import Action, ResolveBigPanda, ResolveServiceNow
from sync.errors import GuardTripped
from sync.settings import GuardSettings

EMPTY_SIDE = "empty_side"
MASS_RESOLVE = "mass_resolve"


def check_empty_side(
    settings: GuardSettings, side: str, what: str, count: int, live_links: int
) -> None:
    """Raise ``GuardTripped(empty_side)`` when ``what`` on ``side`` is empty but links exist."""
    if not settings.empty_side_check or count > 0:
        return
    if live_links >= max(1, settings.min_links):
        raise GuardTripped(
            EMPTY_SIDE,
            f"{side} returned no {what} while {live_links} live links exist; "
            "refusing to act (check the credentials and filters, or run with --force)",
        )


def resolving_links(plans: Iterable[Sequence[Action]]) -> set[int]:
    """Link ids that the plans would resolve on either side."""
    found: set[int] = set()
    for actions in plans:
        for action in actions:
            if isinstance(action, ResolveServiceNow | ResolveBigPanda):
                found.add(action.link_id)
    return found


def check_mass_resolve(
    settings: GuardSettings, plans: Iterable[Sequence[Action]], live_links: int
) -> None:
    """Raise ``GuardTripped(mass_resolve)`` when too large a share of live links would resolve."""
    if live_links < max(1, settings.min_links):
        return
    resolving = len(resolving_links(plans))
    if resolving > settings.max_resolve_fraction * live_links:
        raise GuardTripped(
            MASS_RESOLVE,
            f"this cycle would resolve {resolving} of {live_links} live links "
            f"(more than {settings.max_resolve_fraction:.0%}); refusing to act "
            "(run with --force to confirm)",
        )
