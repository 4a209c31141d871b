"""ServiceNow Table API client (aiohttp), implementing :class:`sync.clients.base.ServiceNowAPI`.

The contract (session, auth, sync read parameters, concurrency and throttling,
classification decisions) is the docstring of :mod:`sync.clients.servicenow.client`. By job:

- :mod:`~sync.clients.servicenow.client`: :class:`ServiceNowClient` and :func:`make_session`;
- :mod:`~sync.clients.servicenow.classification`: :func:`classify`, the one place that maps
  every HTTP outcome to a success or the error to raise, and :func:`parse_retry_after`;
- :mod:`~sync.clients.servicenow.oauth`: the OAuth token (grants, refresh, renewal after a
  401);
- :mod:`~sync.clients.servicenow.parsing`: answers as records, pages, dictionary entries;
- :mod:`~sync.clients.servicenow.paths`: Table API paths and sync read parameters.

Everything importers use is re-exported here (and ``media_type``, for tests); log records
stay on the ``sync.clients.servicenow`` logger.
"""

from sync.clients.http import (
    HttpAnswer,
    Parsed,
    media_type,  # re-exported: tests and callers import it from here
)
from sync.clients.servicenow.classification import classify, parse_retry_after
from sync.clients.servicenow.client import ServiceNowClient, make_session
from sync.clients.servicenow.oauth import TOKEN_REFRESH_MARGIN_S
from sync.clients.servicenow.parsing import Page
from sync.clients.servicenow.paths import (
    CORRELATION_BATCH,
    KEY_FIELDS,
    RECORD_PATH,
    SIDE,
    SYNC_READ_PARAMS,
    TABLE_PATH,
    TOKEN_PATH,
)

__all__ = [
    "CORRELATION_BATCH",
    "KEY_FIELDS",
    "RECORD_PATH",
    "SIDE",
    "SYNC_READ_PARAMS",
    "TABLE_PATH",
    "TOKEN_PATH",
    "TOKEN_REFRESH_MARGIN_S",
    "HttpAnswer",
    "Page",
    "Parsed",
    "ServiceNowClient",
    "classify",
    "make_session",
    "media_type",
    "parse_retry_after",
]
