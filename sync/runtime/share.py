"""Replicas that add capacity: N replicas on Postgres spread M sync pairs between them.

Each pair elects its own leader (an advisory lock per pair schema, a fencing epoch per
pair store), so any replica may lead any pair; this module keeps each one to its share:

- the **fair share** is ``ceil(M / N)``, N being the replicas of this deployment alive
  now (their election sessions in ``pg_stat_activity``, named with the deployment's
  ``group``: :meth:`sync.runtime.leader.PostgresLeaderElector.replicas`);
- a replica below its share tries to take the pairs nobody leads (one advisory lock
  each: never two leaders for a pair);
- a replica above its share (a replica joined) hands over the pairs it ranks last
  (rendezvous hashing of replica and pair, so replicas prefer different pairs and a
  pair moves only when it must): it stops working the pair (waiting for the pair's work
  in flight), then releases its lock; a replica below its share takes it on its next
  tick. A replica that dies loses its sessions, N falls, the others' shares rise and
  they take its pairs on their next ticks.

So a join settles within about 2 poll intervals (the hand-over on the leader's next
tick, the take-over on the joiner's), and so does a death.
"""

from __future__ import annotations

import hashlib
import math
import zlib
from collections.abc import Iterable, Sequence
from typing import Protocol


class Runner(Protocol):
    """What the share needs of a pair's runner."""

    name: str
    leader: bool


def deployment_group(pair_stores: Iterable[str]) -> str:
    """The fingerprint naming this deployment's election sessions, from its pairs' stores
    (their database URLs, schemas included): replicas configured alike share it."""
    return f"{zlib.crc32(','.join(sorted(pair_stores)).encode()):08x}"


def rank(holder: str, pair: str) -> int:
    """Rendezvous score of ``pair`` for ``holder``: a replica keeps its lowest ones."""
    digest = hashlib.blake2b(f"{holder}\x00{pair}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def fair_share(pairs: int, replicas: int) -> int:
    return math.ceil(pairs / max(1, replicas))


def to_hand_over(holder: str, led: Sequence[str], share: int) -> list[str]:
    """The pairs a replica leading ``led`` gives up to lead ``share`` of them."""
    if len(led) <= share:
        return []
    ordered = sorted(led, key=lambda name: rank(holder, name))
    return ordered[share:]


class LeadershipShare:
    """The share of one replica over its runners (module docstring)."""

    def __init__(self, runners: Sequence[Runner], holder: str) -> None:
        self.runners = runners
        self.holder = holder
        self.taking = 0
        """pairs whose lock this replica is trying to take right now (reserved)"""

    def led(self) -> list[str]:
        return [r.name for r in self.runners if r.leader]

    def may_take(self, replicas: int) -> bool:
        """Whether this replica, below its share, may take one more pair."""
        return len(self.led()) + self.taking < fair_share(len(self.runners), replicas)

    def reserve(self, replicas: int) -> bool:
        """:meth:`may_take`, and if so count the attempt until :meth:`unreserve`: the
        pairs' ticks run at once, and twelve of them asking "am I below my share?"
        before any lock is taken must not take twelve (no await between check and
        count, so the event loop makes it atomic)."""
        if not self.may_take(replicas):
            return False
        self.taking += 1
        return True

    def unreserve(self) -> None:
        self.taking = max(0, self.taking - 1)

    def should_hand_over(self, pair: str, replicas: int) -> bool:
        """Whether this replica leads ``pair`` beyond its share and ranks it last."""
        share = fair_share(len(self.runners), replicas)
        return pair in to_hand_over(self.holder, self.led(), share)


__all__ = [
    "LeadershipShare",
    "deployment_group",
    "fair_share",
    "rank",
    "to_hand_over",
]
