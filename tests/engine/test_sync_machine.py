"""A Hypothesis state machine over the whole sync (style.md item 11).

The real planner, Executor and Coordinator run over a MemoryStore, FakeServiceNow,
FakeBigPanda and a FakeClock (as in vdirsyncer's ``tests/unit/sync/test_sync.py``).
Random steps change incidents on either side (tags, fields, conflicts, resolves,
reopens inside and past the window), inject transient write failures, move the clock
and run cycles.

Invariants after every step:

- no BigPanda incident has two live links (store);
- no ServiceNow incident is created twice for one BigPanda incident per reopen cycle
  (every incident with a ``correlation_id`` belongs to a link of that BigPanda incident,
  and there are at most as many as the incident was activated);
- no write is an echo (the fakes' ``echoes`` stay empty, SPEC B5);
- nothing is created for an incident outside the shared environment;
- journals (``sync.journal``): no entry a person wrote is on the other side twice, and
  none is ever carried back to where it was written (no echo).

At teardown (and in the ``settle`` rule) the failures are cleared and cycles run, the
clock moving past ``retry.interval``, until nothing is left to send; then the sides
have converged on every mapped field per the rule directions and the conflict policy,
the resolution states agree per ``resolve_servicenow`` / ``resolve_bigpanda``, every
journal entry written while its pair was linked is on the other side exactly once (while
that link is still the pair's, and not into a Closed/Canceled ticket), and one more cycle
makes zero writes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from hypothesis import HealthCheck, Phase, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

from sync.clock import FakeClock
from sync.constants import MIRROR_MARKER, SN_RESOLVED_STATES, Side
from sync.coordinator import Coordinator, CycleReport
from sync.errors import TransientError
from sync.executor import Executor
from sync.mapping import UNMAPPED, FieldRule, compile_rules, norm
from sync.model import LIVE_LINK_STATES, Link, LinkState
from sync.settings import Settings
from sync.store.base import OutboxState
from sync.store.memory import MemoryStore
from tests.engine.conftest import make_settings
from tests.fakes import FakeBigPanda, FakeServiceNow

T = TypeVar("T")

SHARED_ENV = "env1"
OTHER_ENV = "env2"
RETRY_INTERVAL_S = 30.0
REOPEN_WINDOW_S = 600.0
IN_CYCLE_ATTEMPTS = 2
#: at most this many injected failures wait per method: fewer than one item's attempts
#: (IN_CYCLE_ATTEMPTS * retry.attempts), so no write is ever exhausted
MAX_QUEUED_FAILURES = 4
SETTLE_CYCLES = 25
#: what a person writes in ServiceNow's journal (BigPanda has comments only)
JOURNAL_KINDS = ["work_notes", "comments"]

TEXT = ["a", "b", "c", ""]
SEV_MAP = {"high": "1", "low": "2", "mid": "3"}
PRIO_MAP = {"p1": "1", "p2": "2", "p3": "3"}

#: [[tag_mapping]] rows: two of each direction, one two-way and one one-way with a map
MAPPING: list[dict[str, Any]] = [
    {"bigpanda_tag": "team", "servicenow_field": "u_team", "direction": "both"},
    {
        "bigpanda_tag": "sev",
        "servicenow_field": "urgency",
        "direction": "both",
        "value_map": SEV_MAP,
    },
    {"bigpanda_tag": "region", "servicenow_field": "u_region", "direction": "bp_to_sn"},
    {
        "bigpanda_tag": "prio",
        "servicenow_field": "impact",
        "direction": "bp_to_sn",
        "value_map": PRIO_MAP,
    },
    {"bigpanda_tag": "owner", "servicenow_field": "u_owner", "direction": "sn_to_bp"},
    {"bigpanda_tag": "svc", "servicenow_field": "u_service", "direction": "sn_to_bp"},
]

#: values a person may type, per tag (BigPanda side) and per field (ServiceNow side)
BP_VALUES: dict[str, list[str]] = {
    "team": TEXT,
    "sev": list(SEV_MAP),
    "region": TEXT,
    "prio": list(PRIO_MAP),
}
SN_VALUES: dict[str, list[str]] = {
    "u_team": TEXT,
    "urgency": list(SEV_MAP.values()),
    "u_owner": TEXT,
    "u_service": TEXT,
}
TWO_WAY = [row["bigpanda_tag"] for row in MAPPING if row["direction"] == "both"]
#: tags a person edits in BigPanda / fields in ServiceNow: only a rule's source side, so
#: a one-way rule's target is never edited by hand (it would rightly stay divergent)
BP_EDITABLE = [r["bigpanda_tag"] for r in MAPPING if r["direction"] in ("both", "bp_to_sn")]
SN_EDITABLE = [r["servicenow_field"] for r in MAPPING if r["direction"] in ("both", "sn_to_bp")]

#: the fakes' methods a failure may be injected into (the common writes more often)
WRITE_METHODS = {
    "servicenow": [
        "update_incident",
        "update_incident",
        "create_incident",
        "find_by_correlation_id",
    ],
    # delete_tag too: a tag write that set some tags and then failed to delete one is a
    # partial success; its pair is held until the retry is done (test_regressions.py)
    "bigpanda": [
        "set_tags",
        "set_tags",
        "set_tag",
        "delete_tag",
        "resolve_incident",
        "add_comment",
    ],
}


#: endpoint families a throttle may hit, as the fakes' method names
THROTTLED_FAMILIES: dict[str, list[list[str]]] = {
    "servicenow": [
        ["list_changed"],
        ["update_incident", "create_incident"],
        ["find_by_correlation_id", "find_by_correlation_ids", "get_incident"],
    ],
    "bigpanda": [
        ["list_changed", "search_incidents"],
        ["set_tags", "set_tag", "delete_tag"],
        ["get_incident", "resolve_incident", "add_comment"],
    ],
}


def _transient(side: str) -> TransientError:
    return TransientError(side, "connection reset by peer (injected)")


@dataclass
class Expected:
    """A conflict's expected outcome: the BigPanda-side value the rule must settle on."""

    link_id: int
    value: str | None


class SyncMachine(RuleBasedStateMachine):
    """Both sides, the store and the engine; every rule is one thing that can happen."""

    incidents = Bundle("incidents")

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = FakeClock()
        self.sn = FakeServiceNow(self.clock)
        self.bp = FakeBigPanda(self.clock, environments=(SHARED_ENV, OTHER_ENV))
        self.store = MemoryStore()
        self.settings: Settings | None = None
        self.coordinator: Coordinator | None = None
        self.mapping_rules: tuple[FieldRule, ...] = ()
        #: BigPanda incident id -> how often it became active (create + reopens)
        self.activations: dict[str, int] = {}
        #: (sys_id, field) of fields a good cycle saw filled in ServiceNow: only those must
        #: have reached BigPanda by an sn_to_bp rule (a new ServiceNow incident starts
        #: empty, and the tag keeps the old incident's value until the field is set)
        self.sn_edited: set[tuple[str, str]] = set()
        #: (sys_id, field) edited since the last good cycle
        self.sn_unsynced: set[tuple[str, str]] = set()
        #: incidents changed by hand since the last good cycle
        self.unsynced: set[str] = set()
        #: (incident, tag) -> the value a conflict must settle on
        self.expected: dict[tuple[str, str], Expected] = {}
        #: journal entries people wrote: (side written on, BigPanda id, link id, text)
        self.entries: list[tuple[str, str, int, str]] = []
        #: merged incidents -> their destination (``sync.merges``)
        self.merged: dict[str, str] = {}

    # ------------------------------------------------------------------ helpers

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    @property
    def cfg(self) -> Settings:
        assert self.settings is not None
        return self.settings

    def live_link(self, bp_id: str) -> Link | None:
        return self.run(self.store.live_link_for_bp(bp_id))

    def linked_record(self, bp_id: str) -> tuple[Link, dict[str, str]] | None:
        """The live link and its ServiceNow record, when it can still be edited."""
        link = self.live_link(bp_id)
        if link is None or link.sn_sys_id is None:
            return None
        record = self.sn.incidents[link.sn_sys_id]
        if int(record.get("state", "1")) in (7, 8):
            return None  # closed or canceled: frozen
        return link, record

    def open_items(self) -> int:
        states = [OutboxState.PENDING, OutboxState.IN_FLIGHT, OutboxState.DEAD]
        return self.run(self.store.count_outbox(states))

    def waits_for_retry(self, bp_id: str) -> bool:
        """Has this incident a write waiting for a durable retry?

        A clean conflict needs no write of the pair waiting: the retry is sent as it was
        planned, so the conflict's expected winner would be decided against it.
        """
        states = [OutboxState.PENDING, OutboxState.IN_FLIGHT, OutboxState.DEAD]
        items = self.run(self.store.list_outbox(states, limit=100_000))
        return any(item.bp_incident_id == bp_id for item in items)

    def edited(self, bp_id: str, tag: str | None) -> None:
        """A hand edit of ``tag`` (None: a resolve or reopen): its expectation is void."""
        self.unsynced.add(bp_id)
        self.expected.pop((bp_id, tag or ""), None)
        if self.cfg.incidents.conflict_policy == "newest":
            # newest compares whole records: any later edit of the incident may decide
            for key in [k for k in self.expected if k[0] == bp_id]:
                del self.expected[key]

    def cycle(self) -> CycleReport:
        assert self.coordinator is not None
        report = self.run(self.coordinator.run_cycle())
        for outcome in report.outcomes:
            event(f"cycle outcome {outcome}")
        if self.open_items():
            event("a write waits for a durable retry")
        if report.ok:
            self.unsynced.clear()
            for sys_id, name in self.sn_unsynced:
                if norm(self.sn.incidents[sys_id].get(name)) is not None:
                    self.sn_edited.add((sys_id, name))
            self.sn_unsynced.clear()
        else:
            assert isinstance(report.error, TransientError), report.error
        return report

    def writes(self) -> int:
        return len(self.sn.writes) + len(self.bp.writes)

    # ------------------------------------------------------------------ setup

    @initialize(
        policy=st.sampled_from(["newest", "bigpanda", "servicenow"]),
        resolve_servicenow=st.booleans(),
        resolve_bigpanda=st.booleans(),
        reopen_resolved=st.booleans(),
        on_merge=st.sampled_from(["adopt", "resolve_source"]),
    )
    def setup(
        self,
        policy: str,
        resolve_servicenow: bool,
        resolve_bigpanda: bool,
        reopen_resolved: bool,
        on_merge: str,
    ) -> None:
        self.settings = make_settings(
            **{
                "bigpanda.environments": SHARED_ENV,
                "tag_mapping": MAPPING,
                "incidents.conflict_policy": policy,
                "incidents.resolve_servicenow": resolve_servicenow,
                "incidents.resolve_bigpanda": resolve_bigpanda,
                "incidents.reopen_resolved": reopen_resolved,
                "incidents.reopen_window": REOPEN_WINDOW_S,
                "incidents.on_merge": on_merge,
                "retry.interval": RETRY_INTERVAL_S,
                "retry.attempts": 6,
                "retry.dlq_after": 5,
                "retry.notify_after": 6,
                "retry.in_cycle_attempts": IN_CYCLE_ATTEMPTS,
                "retry.in_cycle_backoff": 0.5,
                "retry.in_cycle_backoff_max": 2.0,
                "guard.min_links": 100_000,
                "guard.max_resolve_fraction": 1.0,
                "journal.from_servicenow": "work_notes,comments",
            }
        )
        self.mapping_rules = compile_rules(self.settings)
        executor = Executor(self.store, self.sn, self.bp, self.settings, self.clock)
        self.coordinator = Coordinator(
            self.store, self.sn, self.bp, executor, self.settings, clock=self.clock
        )

    @initialize(
        target=incidents,
        tags=st.fixed_dictionaries(
            {},
            optional={tag: st.sampled_from([v for v in vs if v]) for tag, vs in BP_VALUES.items()},
        ),
    )
    def first_incident(self, tags: dict[str, str]) -> str:
        return self._add_incident(SHARED_ENV, tags)

    def _add_incident(self, env: str, tags: dict[str, str]) -> str:
        incident = self.bp.add_incident(env, tags=tags)
        self.activations[incident.id] = 1
        self.unsynced.add(incident.id)
        return incident.id

    # ------------------------------------------------------------------ BigPanda

    @rule(
        target=incidents,
        shared=st.sampled_from([True, True, True, False]),
        tags=st.fixed_dictionaries(
            {},
            optional={
                tag: st.sampled_from([v for v in values if v]) for tag, values in BP_VALUES.items()
            },
        ),
    )
    def create_bigpanda_incident(self, shared: bool, tags: dict[str, str]) -> str:
        return self._add_incident(SHARED_ENV if shared else OTHER_ENV, tags)

    @rule(inc=incidents, data=st.data())
    def change_bigpanda_tag(self, inc: str, data: st.DataObject) -> None:
        tag = data.draw(st.sampled_from(BP_EDITABLE), label="tag")
        value = data.draw(st.sampled_from(BP_VALUES[tag]), label="value")
        self.bp.change_tag(inc, tag, value)
        self.edited(inc, tag)

    @rule(inc=incidents)
    def resolve_on_bigpanda(self, inc: str) -> None:
        if self.bp.incidents[inc].active:
            self.bp.resolve(inc)
            self.edited(inc, None)

    @rule(source=incidents, destination=incidents)
    def merge_on_bigpanda(self, source: str, destination: str) -> None:
        src, dst = self.bp.incidents[source], self.bp.incidents[destination]
        if source == destination or not (src.active and dst.active):
            return
        if src.environment_id != dst.environment_id or source in self.merged:
            return
        self.bp.merge(destination, source)
        self.merged[source] = destination
        self.edited(source, None)
        self.edited(destination, None)

    @rule(target=incidents, source=incidents)
    def merge_into_a_new_incident(self, source: str) -> str:
        """A new incident (no ticket yet) takes another's alerts before bpsync sees it."""
        env = self.bp.incidents[source].environment_id
        destination = self._add_incident(env, {})
        self.merge_on_bigpanda(source, destination)
        return destination

    @rule(inc=incidents, past_window=st.booleans())
    def reopen_on_bigpanda(self, inc: str, past_window: bool) -> None:
        if self.bp.incidents[inc].active or inc in self.merged:
            return  # a merged incident has no alerts left to fire again
        if past_window:
            self.clock.advance(REOPEN_WINDOW_S + 1)
        self.bp.reopen(inc)
        self.activations[inc] += 1
        self.edited(inc, None)

    # ------------------------------------------------------------------ ServiceNow

    @rule(inc=incidents, data=st.data())
    def change_servicenow_field(self, inc: str, data: st.DataObject) -> None:
        found = self.linked_record(inc)
        if found is None:
            return
        link, _ = found
        assert link.sn_sys_id is not None
        name = data.draw(st.sampled_from(SN_EDITABLE), label="field")
        value = data.draw(st.sampled_from(SN_VALUES[name]), label="value")
        self.sn.change(link.sn_sys_id, **{name: value})
        self.sn_unsynced.add((link.sn_sys_id, name))
        rule_ = next(r for r in self.mapping_rules if r.field == name)
        self.edited(inc, rule_.tag)

    @rule(inc=incidents, closed=st.booleans())
    def resolve_on_servicenow(self, inc: str, closed: bool) -> None:
        found = self.linked_record(inc)
        if found is None:
            return
        link, record = found
        assert link.sn_sys_id is not None
        if int(record.get("state", "1")) in SN_RESOLVED_STATES:
            return
        self.sn.change(
            link.sn_sys_id,
            state="7" if closed else "6",
            close_code="Workaround provided",
            close_notes="fixed by hand",
        )
        self.edited(inc, None)

    # ------------------------------------------------------------------ both sides

    @rule(inc=incidents, data=st.data())
    def conflicting_change(self, inc: str, data: st.DataObject) -> None:
        """The same two-way field changed on both sides between two cycles (B6)."""
        found = self.linked_record(inc)
        if found is None or self.waits_for_retry(inc):
            return
        link, record = found
        assert link.sn_sys_id is not None
        tag = data.draw(st.sampled_from(TWO_WAY), label="tag")
        rule_ = next(r for r in self.mapping_rules if r.tag == tag)
        bp_new = data.draw(st.sampled_from(BP_VALUES[tag]), label="bp value")
        sn_new = data.draw(st.sampled_from(SN_VALUES[rule_.field]), label="sn value")
        # a clean conflict: nothing else pending for this incident, no write in flight
        clean = inc not in self.unsynced and self.open_items() == 0
        if not self.bp.incidents[inc].active:
            clean = False  # a resolved pair may be reopened or frozen meanwhile
        synced = self.run(self.store.field_states(link.id)).get((Side.SERVICENOW, rule_.field))
        if norm(synced.value if synced else None) != norm(record.get(rule_.field)):
            # a value ServiceNow filled in (a table default) that bpsync never wrote: the
            # engine takes it for a ServiceNow change whenever it reads the record, so
            # which side wins depends on when that read happens: no expectation
            clean = False
        bp_moved = norm(self.bp.incidents[inc].tags.get(tag)) != norm(bp_new)
        sn_moved = norm(record.get(rule_.field)) != norm(sn_new)
        self.bp.change_tag(inc, tag, bp_new)
        self.sn.change(link.sn_sys_id, **{rule_.field: sn_new})
        self.sn_unsynced.add((link.sn_sys_id, rule_.field))
        self.edited(inc, tag)
        if not clean:
            return
        policy = self.cfg.incidents.conflict_policy
        # newest: both stamped in this second -> a tie, which ServiceNow wins
        bp_wins = policy == "bigpanda"
        if bp_moved != sn_moved:  # one side typed the value it already had: no conflict
            bp_wins = bp_moved
        elif not bp_moved:
            return
        value = norm(bp_new) if bp_wins else rule_.to_bp(sn_new)
        if rule_.agree(bp_new, sn_new):
            value = norm(bp_new)
        assert value is not UNMAPPED
        self.expected[(inc, tag)] = Expected(link.id, value)

    # ------------------------------------------------------------------ journals

    @rule(inc=incidents, on_bigpanda=st.booleans(), kind=st.sampled_from(JOURNAL_KINDS))
    def write_journal_entry(self, inc: str, on_bigpanda: bool, kind: str) -> None:
        """A person comments in BigPanda, or writes a work note or comment in ServiceNow,
        on a linked pair: it must reach the other side once, and never come back."""
        found = self.linked_record(inc)
        if found is None or found[0].state != LinkState.LINKED:
            return
        link, _ = found
        assert link.sn_sys_id is not None
        text = f"entry-{len(self.entries)}"
        if on_bigpanda:
            self.bp.comment(inc, text)
        else:
            self.sn.add_journal_entry(link.sn_sys_id, kind, text)
        self.entries.append(("bigpanda" if on_bigpanda else "servicenow", inc, link.id, text))
        self.edited(inc, None)  # a change of the record: "newest" compares them

    def journal_copies(self, side: str, bp_id: str, text: str) -> int:
        """bpsync's copies of ``text`` on ``side`` (every ServiceNow incident of the
        BigPanda incident, or the BigPanda incident)."""
        if side == "bigpanda":
            activities = self.bp.incidents[bp_id].activities
            texts = [str(a.params.get("comment")) for a in activities]
        else:
            sys_ids = {s for s, r in self.sn.incidents.items() if r["correlation_id"] == bp_id}
            link = self.live_link(bp_id)  # a ticket taken over in a merge: the source's id
            if link is not None and link.sn_sys_id is not None:
                sys_ids.add(link.sn_sys_id)
            texts = [t for sys_id, _, t in self.sn.journal if sys_id in sys_ids]
        return sum(1 for t in texts if t.startswith(MIRROR_MARKER) and t.endswith(f"\n{text}"))

    # ------------------------------------------------------------------ faults, time

    @rule(
        side=st.sampled_from(["servicenow", "bigpanda"]),
        data=st.data(),
        # as many as the in-cycle attempts, mostly: the write then waits for retry.interval
        count=st.sampled_from([IN_CYCLE_ATTEMPTS, IN_CYCLE_ATTEMPTS, 1]),
    )
    def fail_next_write(self, side: str, data: st.DataObject, count: int) -> None:
        every = data.draw(st.booleans(), label="every write method of the side")
        methods = sorted(set(WRITE_METHODS[side]))
        if not every:
            methods = [data.draw(st.sampled_from(WRITE_METHODS[side]), label="method")]
        fake = self.sn if side == "servicenow" else self.bp
        for method in methods:
            queued = len(fake._queued.get(method, []))
            n = min(count, MAX_QUEUED_FAILURES - queued)
            if n > 0:
                fake.fail_next(method, *[_transient(side) for _ in range(n)])

    @rule(
        side=st.sampled_from(["servicenow", "bigpanda"]),
        family=st.integers(min_value=0, max_value=2),
        seconds=st.sampled_from([2.0, 10.0, 45.0]),
    )
    def throttled(self, side: str, family: int, seconds: float) -> None:
        """An endpoint family answers 429 for a while (an alert storm elsewhere in the
        org): its calls are held until the window passes, as the clients hold them. A
        cycle during it is slower, never failed (unless a fault was queued as well)."""
        fake = self.sn if side == "servicenow" else self.bp
        methods = THROTTLED_FAMILIES[side][family]
        fake.throttle(methods, self.clock.monotonic() + seconds)
        event(f"throttled {side} {'/'.join(methods)}")
        queued = any(self.sn._queued.values()) or any(self.bp._queued.values())
        report = self.cycle()
        assert report.ok or queued, f"a throttled cycle failed: {report.error!r}"
        self.clock.advance(1)

    @rule(seconds=st.sampled_from([1.0, 5.0, RETRY_INTERVAL_S + 1]))
    def advance_clock(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def run_cycle(self) -> None:
        self.cycle()
        # a person acts at least a second after a cycle's writes: BigPanda stamps in
        # whole seconds, and a revert (A -> bpsync writes B -> person writes A) inside
        # the second of an already-seen snapshot has that snapshot's key, so the poll
        # drops it (a known B16 limit, see the report in test_regressions.py)
        self.clock.advance(1)

    @rule()
    def settle(self) -> None:
        self.settle_and_check()

    # ------------------------------------------------------------------ invariants

    @invariant()
    def no_echoes(self) -> None:
        assert self.sn.echoes == [], self.sn.echoes
        assert self.bp.echoes == [], self.bp.echoes

    @invariant()
    def journal_entries_at_most_once_and_never_back(self) -> None:
        for side, bp_id, _, text in self.entries:
            other = "servicenow" if side == "bigpanda" else "bigpanda"
            assert self.journal_copies(other, bp_id, text) <= 1, (side, text)
            assert self.journal_copies(side, bp_id, text) == 0, f"{text} echoed to {side}"

    @invariant()
    def each_merge_noted_once(self) -> None:
        notes: dict[tuple[str, str], int] = {}
        for sys_id, _, text in self.sn.journal:
            if text.startswith(f"{MIRROR_MARKER} BigPanda merged incident"):
                notes[(sys_id, text)] = notes.get((sys_id, text), 0) + 1
        assert all(n == 1 for n in notes.values()), notes

    @invariant()
    def one_live_link_and_no_duplicate_creates(self) -> None:
        links = self.run(self.store.list_links(None, limit=100_000))
        live: dict[str, int] = {}
        owned: dict[str, set[str]] = {}
        for link in links:
            if link.state in LIVE_LINK_STATES:
                live[link.bp_incident_id] = live.get(link.bp_incident_id, 0) + 1
            if link.sn_sys_id is not None:
                owned.setdefault(link.bp_incident_id, set()).add(link.sn_sys_id)
        assert all(n == 1 for n in live.values()), live
        # a ticket a merge's destination took over keeps its source's correlation_id (it
        # may have followed a chain of merges: source -> destination -> ...)
        for link in links:
            if link.sn_sys_id is not None:
                for source in self.merged:
                    chain, node = {source}, source
                    while node in self.merged:
                        node = self.merged[node]
                        chain.add(node)
                    if link.bp_incident_id in chain:
                        owned.setdefault(source, set()).add(link.sn_sys_id)
        by_corr: dict[str, list[str]] = {}
        for sys_id, record in self.sn.incidents.items():
            by_corr.setdefault(record["correlation_id"], []).append(sys_id)
        for bp_id, sys_ids in by_corr.items():
            incident = self.bp.incidents.get(bp_id)
            assert incident is not None, f"incident for an unknown correlation_id {bp_id}"
            assert incident.environment_id == SHARED_ENV, "created outside the shared env"
            assert len(sys_ids) <= self.activations[bp_id], (bp_id, sys_ids)
            # an incident no link owns would be a duplicate create (B2)
            assert set(sys_ids) <= owned.get(bp_id, set()), (bp_id, sys_ids, owned)

    # ------------------------------------------------------------------ settle

    def settle_and_check(self) -> None:
        if self.coordinator is None:
            return
        for _ in range(2):  # failures still queued hit these cycles' writes first
            self.clock.advance(RETRY_INTERVAL_S + 1)
            self.cycle()
        for fake in (self.sn, self.bp):
            fake._queued.clear()
        # a write whose six attempts all met injected failures (one create can meet those
        # of two methods, its search and its create, injected again while it waits) is
        # in the dead-letter queue for good: an operator sends it again (dlq retry --all)
        if self.run(self.store.retry_dead(None, self.clock.now())):
            event("an exhausted write was sent again from the dead-letter queue")
        quiet = False
        for _ in range(SETTLE_CYCLES):
            self.clock.advance(RETRY_INTERVAL_S + 1)
            before = self.writes()
            self.cycle()
            if self.writes() == before and self.open_items() == 0:
                quiet = True
                break
        assert quiet, f"no convergence after {SETTLE_CYCLES} cycles"
        self.check_converged()
        self.check_journals()
        # B5: one more cycle (the overlap shows bpsync its own writes again): no writes
        self.clock.advance(1)
        before = self.writes()
        self.cycle()
        assert self.writes() == before, (self.sn.writes[-3:], self.bp.writes[-3:])

    def check_converged(self) -> None:
        opts = self.cfg.incidents
        for source, destination in self.merged.items():
            link = self.live_link(destination)
            record = self.sn.incidents.get(link.sn_sys_id or "") if link is not None else None
            if record is not None and record["correlation_id"] == source:
                event(f"merge ({opts.on_merge}): the destination took over the source's ticket")
                assert opts.on_merge == "adopt"
            elif record is not None:
                event(f"merge ({opts.on_merge}): the destination has a ticket of its own")
            source_link = self.live_link(source)
            if opts.on_merge == "adopt":
                assert source_link is None or source_link.state is LinkState.RESOLVED
        for bp_id, incident in self.bp.incidents.items():
            link = self.live_link(bp_id)
            if incident.environment_id != SHARED_ENV:
                assert link is None
                continue
            if link is None:
                # never linked: resolved before its first cycle
                assert not incident.active, f"active incident {bp_id} has no link"
                continue
            assert link.state in (LinkState.LINKED, LinkState.RESOLVED), link
            if link.previous_link_id is not None:
                event("settled on a link made after a reopen past the window")
            assert link.sn_sys_id is not None
            record = self.sn.incidents[link.sn_sys_id]
            state = int(record.get("state", "1"))
            sn_resolved = state in SN_RESOLVED_STATES
            where = f"{bp_id} / {record['number']} (link {link.id} {link.state})"
            if opts.resolve_servicenow and not incident.active:
                assert sn_resolved, f"{where}: BigPanda resolved, ServiceNow {state}"
            if opts.resolve_bigpanda and sn_resolved:
                assert not incident.active, f"{where}: ServiceNow {state}, BigPanda active"
            if incident.active:
                assert link.state == LinkState.LINKED, where
            if not incident.active and sn_resolved:
                assert link.state == LinkState.RESOLVED, where
            if state in (7, 8):
                continue  # closed or canceled: frozen, fields no longer follow
            self.check_fields(bp_id, link, record, where)

    def check_journals(self) -> None:
        """Every entry written while its pair was linked is on the other side exactly
        once, while that link is still the pair's (an entry not carried before a reopen
        past the window follows the new link with the incident's next change) and not
        into a Closed/Canceled ticket (frozen)."""
        for side, bp_id, link_id, text in self.entries:
            link = self.live_link(bp_id)
            if link is None or link.id != link_id or link.sn_sys_id is None:
                continue
            state = int(self.sn.incidents[link.sn_sys_id].get("state", "1"))
            if side == "bigpanda" and state in (7, 8):
                continue
            other = "servicenow" if side == "bigpanda" else "bigpanda"
            event(f"journal entry from {side} checked")
            assert self.journal_copies(other, bp_id, text) == 1, (side, bp_id, text)

    def check_fields(self, bp_id: str, link: Link, record: dict[str, str], where: str) -> None:
        tags = self.bp.incidents[bp_id].tags
        for rule_ in self.mapping_rules:
            b, s = norm(tags.get(rule_.tag)), norm(record.get(rule_.field))
            what = f"{where}: {rule_.tag}={b!r} / {rule_.field}={s!r}"
            if rule_.to_servicenow and rule_.to_bigpanda:
                # with a value map an empty value has no counterpart (never written)
                assert rule_.agree(b, s) or (b is None and s is None), what
                expected = self.expected.get((bp_id, rule_.tag))
                if expected is not None and expected.link_id == link.id:
                    event("conflict outcome checked")
                    assert b == expected.value, f"{what}: conflict should give {expected.value!r}"
            elif rule_.to_servicenow:
                target = rule_.to_sn(b)
                if target is not UNMAPPED:
                    assert s == target, what
            elif (link.sn_sys_id, rule_.field) in self.sn_edited:
                assert b == rule_.to_bp(s), what

    def teardown(self) -> None:
        try:
            self.settle_and_check()
        finally:
            self.loop.close()


SyncMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=40,
    deadline=None,
    # the same examples every run (CI must not flip on a new seed); heavier random runs
    # (5 x 1,000 examples, edits and failures while writes wait included) pass too
    derandomize=True,
    # no explain phase: tracing every line of the sync after a failure takes minutes
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestSyncMachine = SyncMachine.TestCase
