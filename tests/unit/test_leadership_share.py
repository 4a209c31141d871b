"""``sync.runtime.share``: N replicas spread M pairs, each leading about M/N; a join or a
death settles within two rounds of ticks, never with two leaders for a pair.

The model: a lock per pair (at most one holder, as Postgres advisory locks), and each
replica ticking each of its pairs once per round with the daemon's rule
(``PairRunner._lead``): a leader above its share hands over the pairs it ranks last, a
replica below its share takes a free lock.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from sync.runtime.share import LeadershipShare, deployment_group, fair_share, to_hand_over


@dataclass
class Pair:
    name: str
    leader: bool = False


class Replica:
    def __init__(self, holder: str, names: list[str]) -> None:
        self.holder = holder
        self.pairs = [Pair(n) for n in names]
        self.share = LeadershipShare(self.pairs, holder)


def tick_round(replicas: list[Replica], locks: dict[str, str | None], order: int) -> None:
    """Every replica ticks every pair once (interleaved by ``order``); checks the locks."""
    alive = len(replicas)
    turns = [(r, p) for r in replicas for p in r.pairs]
    turns = turns[order % len(turns) :] + turns[: order % len(turns)]
    for replica, pair in turns:
        if pair.leader:
            if replica.share.should_hand_over(pair.name, alive):
                pair.leader = False
                locks[pair.name] = None
        elif replica.share.may_take(alive) and locks[pair.name] is None:
            locks[pair.name] = replica.holder
            pair.leader = True
        leaders = [r.holder for r in replicas for p in r.pairs if p.leader and p.name == pair.name]
        assert len(leaders) <= 1, f"two leaders for {pair.name}"


def led(replicas: list[Replica]) -> dict[str, int]:
    return {r.holder: sum(p.leader for p in r.pairs) for r in replicas}


@settings(max_examples=200, deadline=None)
@given(
    pairs=st.integers(min_value=1, max_value=40),
    replicas=st.integers(min_value=1, max_value=6),
    order=st.integers(min_value=0, max_value=1000),
)
def test_replicas_spread_pairs_join_and_die_within_two_rounds(
    pairs: int, replicas: int, order: int
) -> None:
    names = [f"p{i}" for i in range(pairs)]
    locks: dict[str, str | None] = dict.fromkeys(names)
    group = [Replica(f"r{i}", names) for i in range(replicas)]
    # start: one replica first (it takes everything), then the others join
    tick_round(group[:1], locks, order)
    assert led(group[:1]) == {"r0": pairs}
    for _ in range(2):
        tick_round(group, locks, order)
    share = fair_share(pairs, replicas)
    assert all(v <= share for v in led(group).values()), led(group)
    assert all(holder is not None for holder in locks.values()), "a pair without a leader"
    # a replica dies: its locks go with its sessions; the others take its pairs
    if replicas > 1:
        dead, group = group[-1], group[:-1]
        for pair in dead.pairs:
            if pair.leader:
                locks[pair.name] = None
        for _ in range(2):
            tick_round(group, locks, order + 1)
        assert all(holder is not None for holder in locks.values()), "a pair lost its leader"
        assert all(v <= fair_share(pairs, replicas - 1) for v in led(group).values())


def test_twelve_pairs_three_replicas_lead_four_each() -> None:
    names = [f"pair-{i}" for i in range(12)]
    locks: dict[str, str | None] = dict.fromkeys(names)
    group = [Replica(f"host-{i}:1", names) for i in range(3)]
    for _ in range(3):
        tick_round(group, locks, 0)
    assert sorted(led(group).values()) == [4, 4, 4]


def test_hand_over_keeps_the_best_ranked_pairs() -> None:
    led_now = [f"p{i}" for i in range(6)]
    given_up = to_hand_over("host:1", led_now, 4)
    assert len(given_up) == 2
    assert set(given_up) <= set(led_now)
    assert to_hand_over("host:1", led_now, 6) == []


def test_the_deployment_group_depends_on_the_pairs_stores_only() -> None:
    assert deployment_group(["b", "a"]) == deployment_group(["a", "b"])
    assert deployment_group(["a"]) != deployment_group(["a", "b"])
    assert len(deployment_group(["a"])) == 8


def test_ticks_at_once_reserve_no_more_than_the_share() -> None:
    """Twelve pairs' first ticks run together: each asks before any lock is taken;
    reservations keep the replica to its share (4 of 12 with 3 replicas)."""
    replica = Replica("r0", [f"p{i}" for i in range(12)])
    granted = [replica.share.reserve(3) for _ in replica.pairs]
    assert granted.count(True) == 4
    for pair, ok in zip(replica.pairs, granted, strict=True):
        if ok:
            pair.leader = True
            replica.share.unreserve()
    assert replica.share.taking == 0
    assert not replica.share.reserve(3)
