"""ServiceNow Table API paths, the parameters of every sync read, and batch sizes. See
:mod:`sync.clients.servicenow.client` for the contract."""

from __future__ import annotations

from collections.abc import Mapping

SIDE = "servicenow"
TABLE_PATH = "/api/now/table/{table}"
RECORD_PATH = "/api/now/table/{table}/{sys_id}"
TOKEN_PATH = "/oauth_token.do"  # noqa: S105 - a path, not a password

#: raw values for sync logic (docs 0 and 6.4)
SYNC_READ_PARAMS: Mapping[str, str] = {
    "sysparm_display_value": "false",
    "sysparm_exclude_reference_link": "true",
}
#: correlation ids per ``correlation_idIN`` query (24-character BigPanda ids: a URL of
#: about 1.3 KB, far below any proxy's limit)
CORRELATION_BATCH = 50
#: the fields list_changed always needs for keyset paging and de-duplication
KEY_FIELDS = ("sys_id", "sys_updated_on", "sys_mod_count")
