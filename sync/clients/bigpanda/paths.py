"""BigPanda endpoints, by family (the pacer's buckets), their limits, and the settings
named in errors. See :mod:`sync.clients.bigpanda.client` for the contract."""

from __future__ import annotations

from enum import StrEnum
from urllib.parse import quote

from sync.errors import PermanentError

SIDE = "bigpanda"

V2 = "/resources/v2.0"
ENVIRONMENTS_PATH = f"{V2}/environments"
INCIDENTS_PATH = f"{V2}/environments/{{environment_id}}/incidents"
INCIDENT_PATH = f"{INCIDENTS_PATH}/{{incident_id}}"
RESOLVE_PATH = f"{INCIDENT_PATH}/resolve"
COMMENTS_PATH = f"{INCIDENT_PATH}/comments"
SNOOZE_PATH = f"{INCIDENT_PATH}/snooze"
ASSIGNMENT_PATH = f"{INCIDENT_PATH}/assignment"
TAGS_PATH = f"{INCIDENT_PATH}/tags"
TAG_PATH = f"{TAGS_PATH}/{{tag_id}}"
ACTIVITIES_PATH = f"{V2}/incidents/{{incident_id}}/activities"  # no environment (docs 11.4)
TAG_DEFINITIONS_PATH = f"{V2}/incidents/tags/definitions"
ALERTS_PATH = "/data/v2/alerts"
SCIM_USERS_PATH = f"{V2}/scim/Users"  # SCIM 1.1 although the URL says v2.0 (docs 4.7)
SCIM_USER_PATH = f"{SCIM_USERS_PATH}/{{user_id}}"

#: search: largest page (10,000 reachable results = page 1000 at 100, docs 3.4)
SEARCH_PAGE_SIZE_MAX = 100
#: search with expand=alerts: larger pages are refused with 400 (docs 4.1)
SEARCH_EXPANDED_PAGE_SIZE_MAX = 10
#: search: results beyond this rank cannot be reached by paging (docs 3.4)
SEARCH_RESULT_CAP = 10_000
SEARCH_FOLDERS = frozenset({"active", "shared", "snoozed", "resolved", "unhandled", "maintenance"})
SEARCH_SORTS = frozenset({"last_change", "status", "start", "alerts"})
#: activities: items per page asked for, and a bound on pages read (1,000 activities)
ACTIVITIES_PER_PAGE = 100
ACTIVITIES_MAX_PAGES = 10

API_KEY_SETTING = "bigpanda.api_key"
ORG_TOKEN_SETTING = "bigpanda.bearer_token"  # noqa: S105 - a setting name, not a secret


class Family(StrEnum):
    """Endpoint families: one token bucket and one consecutive-429 count each."""

    ENVIRONMENTS = "environments"
    SEARCH = "search"
    INCIDENT = "incident"
    RESOLVE = "resolve"
    COMMENTS = "comments"
    SNOOZE = "snooze"
    ASSIGNMENT = "assignment"
    ACTIVITIES = "activities"
    TAGS = "tags"
    TAG_DEFINITIONS = "tag_definitions"
    ALERTS = "alerts"
    USERS = "users"
    USER = "user"


#: families whose documented limit is below ``bigpanda.rate_limit_per_s`` (requests/s):
#: the SCIM Users API allows 2 requests per route per second (docs 4.7)
FAMILY_CEILINGS_PER_S: dict[str, float] = {Family.USERS: 2.0, Family.USER: 2.0}


def _segment(value: str, what: str) -> str:
    """One path segment, percent-encoded (tag ids may hold spaces); never empty."""
    if not isinstance(value, str) or not value.strip():
        raise PermanentError(SIDE, f"invalid {what}: {value!r}")
    return quote(value, safe="")
