"""Push mode (``[push] enabled = true``): changes announced by webhooks, synced within
about a second, with polling kept as the safety net.

- :mod:`sync.push.payloads` (pure): the incident a delivery is about, or the one-line
  reason it is refused.
- :mod:`sync.runtime.receiver`: ``POST /webhooks/bigpanda`` and ``/webhooks/servicenow``
  on the daemon's HTTP port: authenticated, bounded, recorded in the store
  (``push_events``) before the 202, then the engine is woken.
- :mod:`sync.push.passes`: the engine's push pass: each announced incident read from
  its API and worked exactly as a polled change (one change key for both copies).
- The poll keeps running every ``push.reconcile_interval`` and finds whatever a lost
  webhook missed; ``bpsync_changes_total{side,via}`` tells pushed from polled-only.
"""
