"""The contracts of the two API clients, as the engine uses them.

The real clients (``sync.clients.servicenow``, ``sync.clients.bigpanda``) implement
these; engine tests use fakes that implement them too. Every method raises only
:mod:`sync.errors` types (``TransientError``, ``PermanentError``/``NotFoundError``,
``FatalError``) on failure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sync.model import BPIncident, JournalEntry, SNFieldInfo, SNIncident, flat_fields

#: a record of any ServiceNow table as the Table API returns it with display_value=false
#: (look-up tables, the CLI's whole records); incidents are read as
#: :class:`~sync.model.SNIncident`
SNRecord = dict[str, Any]


@dataclass(frozen=True, slots=True)
class MalformedRow:
    """A listed row that is not an incident (a required field missing or malformed): the
    poll skips it, naming it; a duplicate check still sees its ``correlation_id``."""

    name: str
    """Its ``sys_id`` as it came, or "?"."""
    problem: str
    """What is wrong, naming the field (:meth:`SNIncident.from_record`'s words)."""
    record: SNRecord
    """The row as it came."""

    @property
    def fields(self) -> dict[str, str]:
        """Its fields as strings, as :class:`SNIncident` has them (:func:`flat_fields`)."""
        return flat_fields(self.record)

    @property
    def sys_id(self) -> str:
        return self.fields.get("sys_id", "")

    @property
    def number(self) -> str:
        return self.fields.get("number", "")

    @property
    def correlation_id(self) -> str:
        return self.fields.get("correlation_id", "")


#: one row of a list of incidents (``list_changed``, ``find_by_correlation_id(s)``): the
#: incident, or the row that is not one
IncidentRow = SNIncident | MalformedRow


class ServiceNowAPI(Protocol):
    """ServiceNow Table API, incident table plus reference look-ups.

    The incident-level methods answer :class:`~sync.model.SNIncident` values; an answer
    that is not an incident (a required field missing or malformed) raises
    ``MalformedRecord`` (a PermanentError that is also a ValueError).
    The lists (``list_changed``, ``find_by_correlation_id(s)``) answer each row as an
    incident or, when it is not one, as a :class:`MalformedRow` in its place: one odd row
    never fails a listing (the poll skips it, naming and counting it; a duplicate check
    still counts it; the client's keyset still steps over it)."""

    def held_for(self) -> float:
        """Seconds before the next request may be sent (a 429's hold, a Retry-After, also
        one handed to the caller; 0: now). One hold for the instance."""
        ...

    async def create_incident(self, fields: Mapping[str, str]) -> SNIncident:
        """POST; returns the incident as stored (after business rules)."""
        ...

    async def get_incident(self, sys_id: str) -> SNIncident:
        """Raises NotFoundError for an unknown sys_id."""
        ...

    async def update_incident(self, sys_id: str, fields: Mapping[str, str]) -> SNIncident:
        """PATCH with only ``fields``; returns the updated record."""
        ...

    async def delete_incident(self, sys_id: str) -> None: ...

    async def find_by_correlation_id(
        self, correlation_id: str, *, active_only: bool = False
    ) -> list[IncidentRow]:
        """Incidents whose ``correlation_id`` equals the value (escaped query)."""
        ...

    async def find_by_correlation_ids(
        self, correlation_ids: Sequence[str], *, active_only: bool = False
    ) -> list[IncidentRow]:
        """Incidents whose ``correlation_id`` is one of the values: one
        ``correlation_idIN...`` query per page of ids (a storm's duplicate checks)."""
        ...

    async def list_changed(
        self, since: datetime | None, *, overlap_s: float, fields: Sequence[str] | None = None
    ) -> list[IncidentRow]:
        """Incidents correlated with BigPanda updated at or after ``since - overlap_s``,
        ordered by (sys_updated_on, sys_id), keyset-paged, de-duplicated by
        (sys_id, sys_mod_count). ``since=None`` lists from the beginning. A row that is
        not an incident comes as a :class:`MalformedRow` in its place."""
        ...

    async def query(
        self, table: str, conditions: Mapping[str, str], *, fields: Sequence[str], limit: int
    ) -> list[SNRecord]:
        """Equality look-up on any table (``sys_user`` by email, ...); values escaped."""
        ...

    async def check_auth(self) -> None:
        """One cheap authorised call; raises FatalError when credentials are refused."""
        ...

    async def field_dictionary(self) -> dict[str, SNFieldInfo]:
        """element -> dictionary entry of the incident table (and what it inherits)."""
        ...

    async def list_journal(self, sys_id: str, elements: Sequence[str]) -> list[JournalEntry]:
        """The incident's journal entries (``sys_journal_field``) whose element is one of
        ``elements`` (``work_notes``, ``comments``), oldest first (``sys_created_on``)."""
        ...


@dataclass(frozen=True, slots=True)
class BPTagDefinition:
    """An incident tag definition (docs 4.5)."""

    id: str
    name: str
    type: str = ""
    active: bool = True
    description: str = ""
    ordered_list: tuple[str, ...] = ()
    """a Priority tag's levels, highest first (``config.ordered_list``)"""


@dataclass(frozen=True, slots=True)
class BPEnvironment:
    id: str
    name: str
    filter: str = ""


@dataclass(frozen=True, slots=True)
class BPActivity:
    id: str
    type: str
    timestamp: int
    created_by: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BPUser:
    """A BigPanda user as the SCIM Users API shows it (docs 4.7, SCIM 1.1)."""

    id: str
    user_name: str
    """``userName``: the login, an e-mail address."""
    name: str = ""
    """``displayName`` (or ``name.formatted``); "" when none is given."""
    emails: tuple[str, ...] = ()
    active: bool = True

    @property
    def email(self) -> str:
        """The e-mail to match by: the primary one, else the user name."""
        return self.emails[0] if self.emails else self.user_name


@dataclass(frozen=True, slots=True)
class BPSearchPage:
    total: int
    items: list[BPIncident]


class BigPandaAPI(Protocol):
    """BigPanda Incidents API v2, incident tags, activities, alerts ingest."""

    def held_for(self, family: str) -> float:
        """Seconds before the next request of endpoint ``family`` may be sent (its hold
        after a 429 or a failure; 0: now). Each family has its own hold."""
        ...

    async def list_environments(self) -> list[BPEnvironment]: ...

    async def search_incidents(
        self,
        environment_id: str,
        *,
        query: str | None = None,
        from_s: int | None = None,
        to_s: int | None = None,
        sort_by: str | None = None,
        folder: str | None = None,
        page: int = 1,
        page_size: int = 10,
        expand_alerts: bool = False,
    ) -> BPSearchPage: ...

    async def get_incident(
        self, environment_id: str, incident_id: str, *, expand_alerts: bool = True
    ) -> BPIncident:
        """Raises NotFoundError for an unknown id."""
        ...

    async def list_changed(
        self, environment_id: str, since_s: int | None, *, overlap_s: float, page_size: int
    ) -> list[BPIncident]:
        """Incidents whose ``updated_at`` >= ``since_s - overlap_s`` (docs section 0): pages
        through the search with ``from`` = since - overlap, not stopping at old
        ``changed_at``; includes incidents whose only change was a tag edit."""
        ...

    async def resolve_incident(self, environment_id: str, incident_id: str, comment: str) -> bool:
        """True when resolved now, False when it was already resolved (HTTP 409)."""
        ...

    async def add_comment(self, environment_id: str, incident_id: str, text: str) -> None: ...

    async def list_activities(
        self, incident_id: str, *, types: Sequence[str] | None = None
    ) -> list[BPActivity]: ...

    async def get_tags(self, environment_id: str, incident_id: str) -> dict[str, str]: ...

    async def set_tag(
        self, environment_id: str, incident_id: str, tag_id: str, value: str
    ) -> None: ...

    async def set_tags(
        self, environment_id: str, incident_id: str, values: Mapping[str, str]
    ) -> None: ...

    async def delete_tag(self, environment_id: str, incident_id: str, tag_id: str) -> None: ...

    async def check_auth(self) -> None:
        """One cheap authorised call; raises FatalError when the key is refused."""
        ...

    async def snooze_incident(
        self, environment_id: str, incident_id: str, end_time: int, comment: str | None = None
    ) -> None:
        """Snooze the incident until ``end_time`` (epoch s)."""
        ...

    async def unsnooze_incident(self, environment_id: str, incident_id: str) -> None: ...

    async def assign_incident(self, environment_id: str, incident_id: str, user_id: str) -> None:
        """``PUT .../assignment {"assignee": user_id}``."""
        ...

    async def unassign_incident(self, environment_id: str, incident_id: str) -> bool:
        """``DELETE .../assignment``: True when unassigned now, False when it was not
        assigned (BigPanda's documented 400)."""
        ...

    async def find_user(self, email: str) -> list[BPUser]:
        """SCIM ``GET /scim/Users?filter=userName eq "<email>"``: the users matching."""
        ...

    async def get_user(self, user_id: str) -> BPUser:
        """SCIM ``GET /scim/Users/{id}``; raises NotFoundError for an unknown id."""
        ...

    async def list_tag_definitions(
        self, *, active: bool | None = None, tag_type: str | None = None
    ) -> list[BPTagDefinition]:
        """The organisation's incident tag definitions (docs 4.5)."""
        ...

    async def create_tag_definition(
        self, name: str, *, tag_type: str = "Text", description: str = "", active: bool = True
    ) -> BPTagDefinition:
        """Define an incident tag (its id is its name)."""
        ...


class RequestObserver(Protocol):
    """Called once per HTTP request a client makes (for metrics and logs).

    ``endpoint`` is the path template (``/api/now/table/{table}/{sys_id}``), ``status``
    None for a transport error.
    """

    def __call__(
        self, side: str, method: str, endpoint: str, status: int | None, duration_s: float
    ) -> None: ...
