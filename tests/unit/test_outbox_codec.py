"""The outbox codec (``sync.executor.codec``): pure, exact round trips, stable keys."""

from __future__ import annotations

import ast
import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sync.actions import (
    AssignBigPanda,
    CarryEntryToBigPanda,
    CarryEntryToServiceNow,
    CommentBigPanda,
    CreateServiceNowIncident,
    RefLookup,
    ReopenServiceNow,
    ResolveBigPanda,
    ResolveServiceNow,
    SetLinkTag,
    SnoozeBigPanda,
    UpdateBigPandaTags,
    UpdateServiceNowFields,
)
from sync.constants import Side
from sync.executor.codec import (
    SIDE_OF_KIND,
    WRITE_CLASSES,
    WriteAction,
    decode_action,
    encode_action,
    field_states,
    idempotency_key,
    ids_of,
    incident_url,
    link_tag_value,
    new_outbox_item,
    ref_value,
    target_of,
)
from sync.executor.writes import BP_FAMILIES, HANDLERS
from sync.store.base import FieldStates

BP = "65a0b1c2d3e4f5a6b7c8d9e0"
SYS = "0123456789abcdef0123456789abcdef"
ENV = "env-prod"
DEADLINE = datetime(2024, 5, 2, 12, 0, tzinfo=UTC)
USER = RefLookup("sys_user", "email", "a@b.c")
GROUP = RefLookup("sys_user_group", "name", "Network")

#: one of every write, with every optional field set (datetimes, look-ups, tuples)
EVERY_WRITE: list[WriteAction] = [
    CreateServiceNowIncident(
        BP,
        ENV,
        {"short_description": "disk full", "urgency": "1"},
        lookups={"assignment_group": GROUP},
        previous_link_id=3,
        record_bp={"severity": "critical", "gone": None},
        record_sn={"urgency": "1"},
        checked_absent=True,
    ),
    UpdateServiceNowFields(
        7,
        BP,
        SYS,
        {"urgency": "2"},
        lookups={"caller_id": USER},
        record_bp={"severity": "warning"},
        record_sn={"urgency": "2"},
    ),
    UpdateBigPandaTags(
        7,
        BP,
        ENV,
        {"team": "web"},
        sys_id=SYS,
        record_bp={"team": "web"},
        record_sn={"assignment_group": "g"},
        remove_tags=("old", "older"),
    ),
    ResolveServiceNow(
        7, BP, SYS, "Solution provided", "done", resolved_by=USER, reopen_deadline=DEADLINE
    ),
    ResolveBigPanda(7, BP, ENV, "resolved in ServiceNow", sys_id=SYS, reopen_deadline=DEADLINE),
    ReopenServiceNow(7, BP, SYS, "reopened in BigPanda"),
    CommentBigPanda(BP, ENV, "ServiceNow refused the sn.update write: no", link_id=7),
    SetLinkTag(BP, ENV, "servicenow_link", "INC0010001 https://sn/x", link_id=7),
    SnoozeBigPanda(7, BP, ENV, 1_800_000_000, SYS, record_bp={"$snoozed": "true"}),
    AssignBigPanda(7, BP, ENV, "u1", SYS, record_bp={"$assignee": "u1"}),
    CarryEntryToServiceNow(
        7,
        BP,
        SYS,
        "a" * 32,
        "work_notes",
        "[bpsync] BigPanda comment by u1 at 2024-05-02 12:00:00 UTC:\nhi",
        "d" * 32,
        on_success=(SetLinkTag(BP, ENV, "servicenow_link", None, 7, only_after_error=True),),
        on_refused=(CommentBigPanda(BP, ENV, "refused", 7, with_error=True),),
    ),
    CarryEntryToBigPanda(7, BP, ENV, SYS, "b" * 32, "[bpsync] ServiceNow work note", "e" * 32),
]

#: the same writes with only the required fields (the defaults round-trip too)
MINIMAL_WRITES: list[WriteAction] = [
    CreateServiceNowIncident(BP, ENV, {}),
    UpdateServiceNowFields(7, BP, SYS, {}),
    UpdateBigPandaTags(7, BP, ENV, {}),
    ResolveServiceNow(7, BP, SYS, "code", "notes"),
    ResolveBigPanda(7, BP, ENV, "comment"),
    ReopenServiceNow(7, BP, SYS, ""),
    CommentBigPanda(BP, ENV, "text"),
    SetLinkTag(BP, ENV, "servicenow_link", "error"),
    SnoozeBigPanda(7, BP, ENV, None),
    AssignBigPanda(7, BP, ENV, None),
    CarryEntryToServiceNow(7, BP, SYS, "a" * 32, "comments", "t", "d"),
    CarryEntryToBigPanda(7, BP, "", SYS, "b" * 32, "t", "e"),
]


def _ids(writes: list[WriteAction]) -> list[str]:
    return [w.kind for w in writes]


def test_every_write_kind_is_covered() -> None:
    assert sorted(_ids(EVERY_WRITE)) == sorted(WRITE_CLASSES)
    assert sorted(_ids(MINIMAL_WRITES)) == sorted(WRITE_CLASSES)
    assert set(SIDE_OF_KIND) == set(WRITE_CLASSES)


def test_every_write_type_has_one_handler() -> None:
    assert set(HANDLERS) == set(WRITE_CLASSES.values())


def test_every_bigpanda_write_names_the_family_whose_hold_it_waits_for() -> None:
    bigpanda = {cls for cls in WRITE_CLASSES.values() if cls.side is Side.BIGPANDA}
    assert set(BP_FAMILIES) == bigpanda


@pytest.mark.parametrize("action", [*EVERY_WRITE, *MINIMAL_WRITES], ids=lambda a: a.kind)
def test_round_trip(action: WriteAction) -> None:
    data = encode_action(action)
    assert decode_action(data) == action
    assert type(decode_action(data)) is type(action)


@pytest.mark.parametrize("action", EVERY_WRITE, ids=lambda a: a.kind)
def test_encoded_payload_is_plain_json_data(action: WriteAction) -> None:
    data = encode_action(action)
    assert json.loads(json.dumps(data)) == data  # survives the store's JSON column
    assert decode_action(json.loads(json.dumps(data))) == action


def test_datetimes_and_lookups_are_tagged() -> None:
    data = encode_action(EVERY_WRITE[3])  # ResolveServiceNow
    assert data["reopen_deadline"] == {"$dt": DEADLINE.isoformat()}
    assert data["resolved_by"] == {"$ref": ["sys_user", "email", "a@b.c"]}
    decoded = decode_action(data)
    assert isinstance(decoded, ResolveServiceNow)
    assert decoded.reopen_deadline == DEADLINE
    assert decoded.reopen_deadline is not None and decoded.reopen_deadline.tzinfo is not None
    tags = decode_action(encode_action(EVERY_WRITE[2]))
    assert isinstance(tags, UpdateBigPandaTags)
    assert tags.remove_tags == ("old", "older")  # a sequence comes back as a tuple


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"kind": "sn.delete"},
        {"kind": "link.record", "link_id": 1},  # store-only: never an outbox item
    ],
)
def test_unknown_kind_is_a_value_error(data: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="unknown outbox action kind"):
        decode_action(data)


def test_malformed_payload_is_a_value_error() -> None:
    data = encode_action(EVERY_WRITE[6])
    with pytest.raises(ValueError, match=r"malformed bp\.comment payload"):
        decode_action({**data, "unexpected": 1})
    missing = {k: v for k, v in data.items() if k != "text"}
    with pytest.raises(ValueError, match=r"malformed bp\.comment payload"):
        decode_action(missing)


def test_targets() -> None:
    by_kind = {a.kind: target_of(a) for a in EVERY_WRITE}
    assert by_kind == {
        "sn.create": f"servicenow:create:{BP}",
        "sn.update": f"servicenow:{SYS}",
        "sn.resolve": f"servicenow:{SYS}",
        "sn.reopen": f"servicenow:{SYS}",
        "bp.tags": f"bigpanda:{BP}",
        "bp.resolve": f"bigpanda:{BP}",
        "bp.comment": f"bigpanda:{BP}",
        "bp.link_tag": f"bigpanda:{BP}",
        "bp.snooze": f"bigpanda:{BP}",
        "sn.journal": f"servicenow:{SYS}",
        "bp.journal": f"bigpanda:{BP}",
        "bp.assign": f"bigpanda:{BP}",
    }


def test_idempotency_key_is_stable() -> None:
    payload = {
        "action": {"kind": "sn.update", "sys_id": "abc", "fields": {"urgency": "2"}},
        "environment_id": ENV,
    }
    key = idempotency_key("sn.update", "servicenow:abc", payload)
    # pinned: the keys of items an older process enqueued still match a resent write's
    assert key == "9d90369140232f69a2a36895cf103bf84c188e73"
    # the same content in another insertion order: the same key
    reordered = dict(reversed(list(payload.items())))
    assert idempotency_key("sn.update", "servicenow:abc", reordered) == key
    # and the same for an action encoded twice
    action = EVERY_WRITE[1]
    assert new_outbox_item(action, ENV)[0] == new_outbox_item(action, ENV)[0]


def test_idempotency_key_is_distinct_per_payload() -> None:
    keys = set()
    for action in [*EVERY_WRITE, *MINIMAL_WRITES]:
        new, _ = new_outbox_item(action, ENV)
        keys.add(new.idempotency_key)
    assert len(keys) == len(EVERY_WRITE) + len(MINIMAL_WRITES)
    update = EVERY_WRITE[1]
    assert isinstance(update, UpdateServiceNowFields)
    other_value = dataclasses.replace(update, fields={"urgency": "3"})
    keys_of = {
        new_outbox_item(update, ENV)[0].idempotency_key,
        new_outbox_item(other_value, ENV)[0].idempotency_key,
        new_outbox_item(update, "env-other")[0].idempotency_key,
        new_outbox_item(update, ENV, {"link_id": 9})[0].idempotency_key,
    }
    assert len(keys_of) == 4
    payload = {"action": encode_action(update)}
    assert idempotency_key("sn.update", "a", payload) != idempotency_key("sn.update", "b", payload)
    assert idempotency_key("sn.update", "a", payload) != idempotency_key("sn.reopen", "a", payload)


def test_new_outbox_item() -> None:
    create = EVERY_WRITE[0]
    new, meta = new_outbox_item(create, ENV, {"link_id": 5})
    assert meta == {"environment_id": ENV, "link_id": 5}
    assert new.kind == "sn.create"
    assert new.target == f"servicenow:create:{BP}"
    assert new.payload == {"action": encode_action(create), "environment_id": ENV, "link_id": 5}
    assert (new.link_id, new.bp_incident_id, new.sn_sys_id) == (5, BP, None)
    assert new.idempotency_key == idempotency_key(new.kind, new.target, new.payload)
    update, _ = new_outbox_item(EVERY_WRITE[1], None, {"link_id": 99})
    assert (update.link_id, update.bp_incident_id, update.sn_sys_id) == (7, BP, SYS)
    assert update.payload["environment_id"] is None
    assert decode_action(update.payload["action"]) == EVERY_WRITE[1]


def test_ids_of() -> None:
    assert ids_of(EVERY_WRITE[0]) == (BP, None, None)
    assert ids_of(EVERY_WRITE[1]) == (BP, SYS, 7)
    assert ids_of(MINIMAL_WRITES[4]) == (BP, None, 7)


def test_link_tag_value_and_url() -> None:
    assert incident_url("https://x.service-now.com/", SYS) == (
        f"https://x.service-now.com/nav_to.do?uri=incident.do?sys_id={SYS}"
    )
    url = incident_url("https://x.service-now.com", SYS)
    assert link_tag_value("https://x.service-now.com", "INC0010001", SYS) == f"INC0010001 {url}"
    assert link_tag_value("https://x.service-now.com", "", SYS) == url


def test_ref_value() -> None:
    assert ref_value(SYS) == SYS
    assert ref_value({"link": "https://x/api/now/table/sys_user/1", "value": SYS}) == SYS
    assert ref_value({"link": "https://x"}) == ""
    assert ref_value(None) == ""
    assert ref_value(3) == "3"


def test_field_states() -> None:
    assert field_states(1, {}, {}) == []
    assert field_states(1, {"a": "1"}, {"b": None}) == [
        FieldStates(1, Side.BIGPANDA, {"a": "1"}),
        FieldStates(1, Side.SERVICENOW, {"b": None}),
    ]
    assert field_states(1, {}, {"b": "2"}) == [FieldStates(1, Side.SERVICENOW, {"b": "2"})]


def test_codec_imports_nothing_that_does_io() -> None:
    path = Path(__file__).resolve().parents[2] / "sync" / "executor" / "codec.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imports: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module:
            imports.add(node.module)
        elif isinstance(node, ast.Import):
            imports.update(alias.name for alias in node.names)
    project = {name for name in imports if name.startswith("sync")}
    assert project <= {"sync.actions", "sync.constants", "sync.store.base"}, project
    io = {"aiohttp", "sqlalchemy", "asyncio", "asyncpg", "aiosqlite", "socket", "logging"}
    assert not {name.split(".")[0] for name in imports} & io
