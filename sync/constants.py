"""Vendor code tables and fixed numbers, in one commented place."""

from __future__ import annotations

from enum import IntEnum, StrEnum


class Side(StrEnum):
    """The two systems bpsync keeps in sync."""

    BIGPANDA = "bigpanda"
    SERVICENOW = "servicenow"


class SNState(IntEnum):
    """ServiceNow incident ``state`` values (Helsinki+ model; docs/servicenow-api.md 3.2)."""

    NEW = 1
    IN_PROGRESS = 2
    ON_HOLD = 3
    RESOLVED = 6
    CLOSED = 7  # terminal: never reopened, a new incident is created instead
    CANCELED = 8  # terminal as well


#: states in which a ServiceNow incident counts as resolved for the sync
SN_RESOLVED_STATES = frozenset({SNState.RESOLVED, SNState.CLOSED, SNState.CANCELED})
#: ServiceNow's date-time format in the Table API (UTC with display_value=false)
SN_DATETIME_FORMAT = "%Y-%m-%d %H:%M:%S"

#: ``correlation_display`` written on every incident bpsync creates
SN_CORRELATION_DISPLAY = "BigPanda"

#: ServiceNow field length limits (dictionary defaults, docs/servicenow-api.md 3.1)
SN_SHORT_DESCRIPTION_MAX = 160
SN_DESCRIPTION_MAX = 4000
SN_JOURNAL_MAX = 4000


class BPStatus(StrEnum):
    """BigPanda incident/alert statuses, compared lower-case (the API mixes cases)."""

    CRITICAL = "critical"
    WARNING = "warning"
    UNKNOWN = "unknown"
    OK = "ok"


#: link tag value when ServiceNow refused a write (the seed's convention)
LINK_TAG_ERROR_VALUE = "error"

#: marker put in text that bpsync mirrors (comments, work notes), so it never syncs it back
MIRROR_MARKER = "[bpsync]"

#: BigPanda ids are 24 hex digits; ServiceNow sys_ids are 32
BP_ID_PATTERN = r"^[0-9a-f]{24}$"
SN_SYS_ID_PATTERN = r"^[0-9a-f]{32}$"

#: longest BigPanda comment bpsync writes (the documented limit of resolve comments in
#: batch-resolve; used for every comment so none is refused for its length)
BP_COMMENT_MAX = 1000
