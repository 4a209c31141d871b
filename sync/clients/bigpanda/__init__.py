"""BigPanda REST client (aiohttp), implementing :class:`sync.clients.base.BigPandaAPI`.

The contract (auth, endpoints by family, pacing, classification decisions, parsing) is
the docstring of :mod:`sync.clients.bigpanda.client`. By job:

- :mod:`~sync.clients.bigpanda.client`: :class:`BigPandaClient` and :func:`make_session`;
- :mod:`~sync.clients.bigpanda.classification`: :func:`classify`, the one place that maps
  every HTTP outcome to a success or the error to raise, and :func:`rate_limit_delay_s`;
- :mod:`~sync.clients.bigpanda.parsing`: vendor JSON as typed models
  (:func:`parse_incident`, :func:`parse_tag_definition`, :func:`poison_reason`, ...);
- :mod:`~sync.clients.bigpanda.people`: the assignment and SCIM Users calls, mixed in;
- :mod:`~sync.clients.bigpanda.tags`: the incident tag and tag definition calls, mixed
  in (:mod:`~sync.clients.bigpanda.calls`: what the mixed-in calls use of the client);
- :mod:`~sync.clients.bigpanda.paths`: endpoints, :class:`Family`, page size limits.

Everything importers use is re-exported here; log records stay on the
``sync.clients.bigpanda`` logger.
"""

from sync.clients.bigpanda.classification import (
    RATE_LIMIT_BACKOFF_BASE_S,
    RATE_LIMIT_BACKOFF_MAX_S,
    classify,
    rate_limit_delay_s,
    vendor_message,
)
from sync.clients.bigpanda.client import BigPandaClient, make_session
from sync.clients.bigpanda.parsing import (
    KNOWN_STATUSES,
    parse_activity,
    parse_alert,
    parse_environment,
    parse_incident,
    parse_tag_definition,
    poison_reason,
)
from sync.clients.bigpanda.paths import (
    ACTIVITIES_MAX_PAGES,
    ACTIVITIES_PATH,
    ACTIVITIES_PER_PAGE,
    ALERTS_PATH,
    API_KEY_SETTING,
    COMMENTS_PATH,
    ENVIRONMENTS_PATH,
    INCIDENT_PATH,
    INCIDENTS_PATH,
    ORG_TOKEN_SETTING,
    RESOLVE_PATH,
    SEARCH_EXPANDED_PAGE_SIZE_MAX,
    SEARCH_FOLDERS,
    SEARCH_PAGE_SIZE_MAX,
    SEARCH_RESULT_CAP,
    SEARCH_SORTS,
    SIDE,
    TAG_DEFINITIONS_PATH,
    TAG_PATH,
    TAGS_PATH,
    V2,
    Family,
)

__all__ = [
    "ACTIVITIES_MAX_PAGES",
    "ACTIVITIES_PATH",
    "ACTIVITIES_PER_PAGE",
    "ALERTS_PATH",
    "API_KEY_SETTING",
    "COMMENTS_PATH",
    "ENVIRONMENTS_PATH",
    "INCIDENTS_PATH",
    "INCIDENT_PATH",
    "KNOWN_STATUSES",
    "ORG_TOKEN_SETTING",
    "RATE_LIMIT_BACKOFF_BASE_S",
    "RATE_LIMIT_BACKOFF_MAX_S",
    "RESOLVE_PATH",
    "SEARCH_EXPANDED_PAGE_SIZE_MAX",
    "SEARCH_FOLDERS",
    "SEARCH_PAGE_SIZE_MAX",
    "SEARCH_RESULT_CAP",
    "SEARCH_SORTS",
    "SIDE",
    "TAGS_PATH",
    "TAG_DEFINITIONS_PATH",
    "TAG_PATH",
    "V2",
    "BigPandaClient",
    "Family",
    "classify",
    "make_session",
    "parse_activity",
    "parse_alert",
    "parse_environment",
    "parse_incident",
    "parse_tag_definition",
    "poison_reason",
    "rate_limit_delay_s",
    "vendor_message",
]
