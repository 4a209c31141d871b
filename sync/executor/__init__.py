"""The executor: carries out the planner's actions through the clients, durably.

Split by job (see each module's docstring for its part of the contract):

- :mod:`~sync.executor.core`: :class:`Executor`, one pair's actions in order, store-only
  actions, the start of a create, recovery of pending links;
- :mod:`~sync.executor.codec`: the pure outbox codec (payloads, targets, idempotency
  keys, the link tag's value);
- :mod:`~sync.executor.writes`: one handler per write action (a dispatch table), the
  idempotent create (B2);
- :mod:`~sync.executor.delivery`: the outbox's attempts, backoff, dead letters (the
  retry policy);
- :mod:`~sync.executor.alerts`: operator alerts (the notify URL) and B14's comment.

Every line the executor logs is on the logger ``sync.executor``. This package exports
what the single module did; the parts' own names are imported from the parts.
"""

from sync.executor.alerts import NOTIFY_TIMEOUT_S
from sync.executor.codec import (
    BP_ENV_CHECKPOINT,
    SIDE_OF_KIND,
    WriteAction,
    decode_action,
    encode_action,
    idempotency_key,
    incident_url,
    link_tag_value,
    target_of,
)
from sync.executor.core import Adoption, Executor, ExecutorMetrics, PairResult, Recovery
from sync.executor.delivery import (
    DEFAULT_DRIVE_LIMIT,
    DEFAULT_LEASE_S,
    PERMANENT_PREFIX,
    DriveReport,
)

__all__ = [
    "BP_ENV_CHECKPOINT",
    "DEFAULT_DRIVE_LIMIT",
    "DEFAULT_LEASE_S",
    "NOTIFY_TIMEOUT_S",
    "PERMANENT_PREFIX",
    "SIDE_OF_KIND",
    "Adoption",
    "DriveReport",
    "Executor",
    "ExecutorMetrics",
    "PairResult",
    "Recovery",
    "WriteAction",
    "decode_action",
    "encode_action",
    "idempotency_key",
    "incident_url",
    "link_tag_value",
    "target_of",
]
