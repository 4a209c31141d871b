"""An incident's journal entries (``sys_journal_field``) as typed entries (docs 3.5).

``GET /api/now/table/sys_journal_field?sysparm_query=name=incident^element_id=<sys_id>
^elementINwork_notes,comments^ORDERBYsys_created_on``, every page (a short
page is not the end while ``X-Total-Count`` says more rows match: ACLs hide rows after
the limit is applied, docs 1.5). A row without an id, an element or a valid
``sys_created_on`` is a malformed answer (:class:`~sync.errors.PermanentError`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC
from typing import Any, Protocol

from sync.clients.servicenow.parsing import Page
from sync.clients.servicenow.paths import SIDE
from sync.clients.snquery import EncodedQuery, check_sys_id
from sync.errors import PermanentError
from sync.model import JournalEntry, sn_datetime

#: the journal table and the fields bpsync reads from it
JOURNAL_TABLE = "sys_journal_field"
JOURNAL_FIELDS = ("sys_id", "element", "value", "sys_created_on", "sys_created_by")


class _Lister(Protocol):
    async def list_page(
        self,
        table: str,
        query: EncodedQuery | None,
        *,
        fields: Sequence[str] | None = None,
        limit: int,
        offset: int = 0,
    ) -> Page: ...


def journal_entry(row: dict[str, Any]) -> JournalEntry:
    """One ``sys_journal_field`` row (raw values) as an entry."""
    sys_id = str(row.get("sys_id") or "")
    element = str(row.get("element") or "")
    created = str(row.get("sys_created_on") or "")
    try:
        at = sn_datetime(created).replace(tzinfo=UTC)
    except ValueError:
        at = None
    if not sys_id or not element or at is None:
        raise PermanentError(SIDE, f"unexpected sys_journal_field row {sys_id or '?'}")
    return JournalEntry(
        id=sys_id,
        kind=element,
        text=str(row.get("value") or ""),
        author=str(row.get("sys_created_by") or ""),
        at=at,
    )


async def read_journal(
    client: _Lister, table: str, sys_id: str, elements: Sequence[str], *, page_size: int
) -> list[JournalEntry]:
    """The journal entries of record ``sys_id`` of ``table``, oldest first."""
    if not elements:
        return []
    query = (
        EncodedQuery()
        .eq("name", table)
        .eq("element_id", check_sys_id(sys_id))
        .in_("element", list(elements))
        .order_by("sys_created_on")  # (ties keep the table's order: no sys_id key,
    )  # which would shuffle the entries of one second)
    out: list[JournalEntry] = []
    offset = 0
    while True:
        page = await client.list_page(
            JOURNAL_TABLE, query, fields=JOURNAL_FIELDS, limit=page_size, offset=offset
        )
        out.extend(journal_entry(row) for row in page.records)
        offset += page_size
        if (page.total is None and len(page.records) < page_size) or (
            page.total is not None and offset >= page.total
        ):
            return out
