"""The steps a plan takes after a ServiceNow write, and what a later success settles."""

from __future__ import annotations

from sync.actions import (
    CommentBigPanda,
    CreateServiceNowIncident,
    ResolveServiceNow,
    SetLinkTag,
    UpdateBigPandaTags,
    UpdateServiceNowFields,
)
from sync.followups import steps_after, supersedes
from sync.settings import Settings

BP, SYS, ENV = "a" * 24, "b" * 32, "env"


def update(**fields: str) -> UpdateServiceNowFields:
    return UpdateServiceNowFields(1, BP, SYS, fields)


def tags(*names: str, remove: tuple[str, ...] = ()) -> UpdateBigPandaTags:
    return UpdateBigPandaTags(1, BP, ENV, dict.fromkeys(names, "v"), remove_tags=remove)


def test_a_later_write_supersedes_only_what_it_covers() -> None:
    assert supersedes(update(impact="1", urgency="2"), update(impact="9"))
    assert not supersedes(update(impact="1"), update(impact="9", urgency="9"))
    assert supersedes(tags("a", "b"), tags("a"))
    assert supersedes(tags("a", remove=("b",)), tags("b"))
    assert not supersedes(tags("a"), tags("c"))
    link = SetLinkTag(BP, ENV, "servicenow_link", None, 1)
    assert supersedes(link, SetLinkTag(BP, ENV, "servicenow_link", "error", 1))
    assert not supersedes(link, SetLinkTag(BP, ENV, "other", "x", 1))
    comment = CommentBigPanda(BP, ENV, "text")
    assert not supersedes(comment, comment)  # every comment is its own message
    resolve = ResolveServiceNow(1, BP, SYS, "code", "notes")
    assert supersedes(resolve, resolve)
    assert not supersedes(update(impact="1"), resolve)  # another kind


def test_an_item_without_steps_gets_the_same_rules() -> None:
    """An outbox item of an earlier version carries no steps: the rules give them."""
    settings = Settings()
    create = CreateServiceNowIncident(BP, ENV, {"short_description": "x"})
    [link] = steps_after(create, settings, refused=False)
    assert link == SetLinkTag(BP, ENV, "servicenow_link", None)
    comment, error = steps_after(update(impact="1"), settings, refused=True)
    assert isinstance(comment, CommentBigPanda) and comment.with_error
    assert error == SetLinkTag(BP, "", "servicenow_link", "error", 1)
    [back] = steps_after(update(impact="1"), settings, refused=False)
    assert isinstance(back, SetLinkTag) and back.only_after_error
