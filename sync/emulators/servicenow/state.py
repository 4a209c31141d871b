"""The emulated instance's state: options, tables of string values, seeding, writes."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sync.clock import Clock
from sync.constants import SN_DATETIME_FORMAT, SN_JOURNAL_MAX
from sync.emulators.servicenow.errors import SNError, bad_request, not_found
from sync.emulators.servicenow.schema import (
    CANCELED,
    CLOSED,
    DISPLAY_FIELDS,
    IN_PROGRESS,
    INCIDENT_FIELDS,
    INTERNAL_TYPES,
    JOURNAL_LABELS,
    NEW,
    ON_HOLD,
    RESOLVED,
    SCHEMAS,
    SUPPLIED_SYS_ID_RE,
    TASK_FIELDS,
    FieldDef,
    stable_id,
    to_zone,
)
from sync.emulators.sn_semaphore import DEFAULT_QUEUE as DEFAULT_SEMAPHORE_QUEUE
from sync.emulators.sn_semaphore import SemaphorePool

DEFAULT_USERS: Mapping[str, str] = {"bpsync": "bpsync", "admin": "admin"}
DEFAULT_OAUTH_CLIENTS: Mapping[str, str] = {"bpsync": "bpsync"}
DEFAULT_LIMIT = 10_000
FIRST_INCIDENT_NUMBER = 10_001
DEFAULT_SYSTEM_TZ = "America/Los_Angeles"

LEGACY_CLOSE_CODES = (
    "Solved (Work Around)",
    "Solved (Permanently)",
    "Solved Remotely (Work Around)",
    "Solved Remotely (Permanently)",
    "Not Solved (Not Reproducible)",
    "Not Solved (Too Costly)",
    "Closed/Resolved by Caller",
)
CURRENT_CLOSE_CODES = (
    "Duplicate",
    "Known error",
    "No resolution provided",
    "Resolved by caller",
    "Resolved by change",
    "Resolved by problem",
    "Resolved by request",
    "Solution provided",
    "Workaround provided",
    "User error",
)

#: priority lookup rules (docs 3.3): (impact, urgency) -> priority
PRIORITY_MATRIX: Mapping[tuple[str, str], str] = {
    ("1", "1"): "1",
    ("1", "2"): "2",
    ("1", "3"): "3",
    ("2", "1"): "2",
    ("2", "2"): "3",
    ("2", "3"): "4",
    ("3", "1"): "3",
    ("3", "2"): "4",
    ("3", "3"): "5",
}


@dataclass(slots=True)
class User:
    sys_id: str
    user_name: str


@dataclass(slots=True)
class Token:
    value: str
    user: str
    client_id: str
    expires_at: datetime


@dataclass(slots=True)
class Options:
    default_limit: int = DEFAULT_LIMIT
    close_codes: Literal["current", "legacy"] = "current"
    api_v1_404: bool = True
    invalid_query: Literal["ignore", "no_rows", "forbidden"] = "ignore"
    overlong: Literal["truncate", "reject"] = "truncate"
    terminal_states: frozenset[str] = frozenset({CLOSED})
    hold_reason_required: bool = True
    rate_limit_per_hour: int | None = None
    user_rate_limits: Mapping[str, int] = field(default_factory=dict)
    oauth_clients: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_OAUTH_CLIENTS))
    client_credentials_user: str | None = None
    api_keys: Mapping[str, str] = field(default_factory=dict)
    shuffle_unordered: bool = False
    user_time_zone: str | None = None
    """sys_user.time_zone of the login users; None = ``GMT`` (docs 2.4: set it to GMT)."""
    system_time_zone: str = DEFAULT_SYSTEM_TZ
    semaphores: int | None = None
    """integration semaphores per node (docs 1.6); None = no pool"""
    semaphore_queue: int = DEFAULT_SEMAPHORE_QUEUE
    processing_s: float = 0.0
    """how long every Table API request holds its semaphore (on the injected clock)"""
    short_pages: float = 0.0
    """fraction of incident rows hidden from list pages after the limit (ACL-like)"""
    oauth_client_auth: Literal["form", "basic", "both"] = "both"
    dictionary_access: Literal["read", "hidden", "forbidden"] = "read"
    """``sys_dictionary`` for the login users: readable, rows hidden by ACL (empty
    lists) or refused (403), as instances differ in what an integration user may read"""

    @property
    def login_time_zone(self) -> str:
        return "GMT" if self.user_time_zone is None else self.user_time_zone


class InstanceState:
    """The emulated instance: tables of string-valued records plus counters and tokens."""

    def __init__(
        self, clock: Clock, users: Mapping[str, str], seed: int | None, options: Options
    ) -> None:
        self.clock = clock
        self.passwords = dict(users)
        self.options = options
        self._seed = seed
        self.rng = random.Random(seed)
        self.tables: dict[str, dict[str, dict[str, str]]] = {}
        self.next_number = FIRST_INCIDENT_NUMBER
        self.access_tokens: dict[str, Token] = {}
        self.refresh_tokens: dict[str, Token] = {}
        self.rate_counts: dict[tuple[str, int], int] = {}
        self._journal_seq = 0
        self.journal_order: dict[str, int] = {}
        self._choice_labels: dict[tuple[str, str, str], str] = {}
        self._valid_close_codes: set[str] = set()
        self.pool = SemaphorePool(options.semaphores, options.semaphore_queue)
        # short_pages: which rows an "ACL" hides is fixed per sys_id and seed
        self._hide_salt = str(seed) if seed is not None else f"{random.getrandbits(64):016x}"
        self.reset()

    # ------------------------------------------------------------------ seeding
    def reset(self) -> None:
        self.rng = random.Random(self._seed)
        self.tables = {name: {} for name in SCHEMAS}
        self.next_number = FIRST_INCIDENT_NUMBER
        self.access_tokens.clear()
        self.refresh_tokens.clear()
        self.rate_counts.clear()
        self.journal_order.clear()
        self._journal_seq = 0
        self.pool.reset_counters()
        self._seed_rows()
        self.refresh_choices()

    def set_login_time_zone(self, zone: str | None) -> None:
        """Option ``user_time_zone`` at run time: the login users' ``sys_user.time_zone``."""
        self.options.user_time_zone = zone
        logins = set(self.passwords) | {"admin"}
        for row in self.tables["sys_user"].values():
            if row["user_name"] in logins:
                row["time_zone"] = self.options.login_time_zone

    def hidden_from_lists(self, table: str, row: Mapping[str, str]) -> bool:
        """Option ``short_pages``: is this row filtered out of list pages (after the limit)?

        Only ``incident`` rows; the choice is stable per sys_id (like a read ACL) and
        follows the seed, and a row hidden at fraction p stays hidden at any larger p.
        """
        fraction = self.options.short_pages
        if fraction <= 0 or table != "incident":
            return False
        digest = hashlib.sha256(f"{self._hide_salt}:{row.get('sys_id', '')}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < fraction

    def _seed_row(self, table: str, key: str, values: Mapping[str, str]) -> str:
        sys_id = stable_id(f"{table}:{key}")
        now = self.now_str()
        row = self.blank(table)
        row.update(values)
        row.update(
            sys_id=sys_id,
            sys_created_on=now,
            sys_created_by="system",
            sys_updated_on=now,
            sys_updated_by="system",
            sys_mod_count="0",
        )
        self.tables[table][sys_id] = row
        return sys_id

    def _seed_rows(self) -> None:
        logins = dict(self.passwords)
        logins.setdefault("admin", "")
        for user_name in logins:
            pretty = "System Administrator" if user_name == "admin" else user_name.title()
            self._seed_row(
                "sys_user",
                user_name,
                {
                    "user_name": user_name,
                    "name": pretty,
                    "first_name": pretty,
                    "email": f"{user_name}@example.com",
                    "time_zone": self.options.login_time_zone,
                },
            )
        people = [  # the last two share one e-mail on purpose (ambiguity handling)
            ("abel.tuter", "Abel Tuter", "abel.tuter@example.com", "America/New_York"),
            ("beth.anglin", "Beth Anglin", "beth.anglin@example.com", ""),
            ("beth.anglin2", "Beth Anglin", "beth.anglin@example.com", "Europe/Paris"),
        ]
        for user_name, name, email, tz in people:
            first, _, last = name.partition(" ")
            self._seed_row(
                "sys_user",
                user_name,
                {
                    "user_name": user_name,
                    "name": name,
                    "first_name": first,
                    "last_name": last,
                    "email": email,
                    "time_zone": tz,
                },
            )
        for name in ("Service Desk", "Network", "Database", "Software", "Hardware"):
            self._seed_row("sys_user_group", name, {"name": name})
        cis = [  # two CIs named web01 in different classes on purpose
            ("web01", "cmdb_ci_server"),
            ("web01", "cmdb_ci_linux_server"),
            ("db01", "cmdb_ci_linux_server"),
            ("lb01", "cmdb_ci_netgear"),
        ]
        for name, klass in cis:
            self._seed_row("cmdb_ci", f"{name}:{klass}", {"name": name, "sys_class_name": klass})
        for element, fdef in INCIDENT_FIELDS.items():
            owner = "task" if element in TASK_FIELDS or element.startswith("sys_") else "incident"
            self._seed_row(
                "sys_dictionary",
                f"{owner}:{element}",
                {
                    "name": owner,
                    "element": element,
                    "column_label": fdef.label or element.replace("_", " ").title(),
                    "internal_type": INTERNAL_TYPES[fdef.kind],
                    "max_length": str(
                        SN_JOURNAL_MAX if fdef.kind == "journal" else fdef.max_len or 255
                    ),
                    "reference": fdef.ref or "",
                },
            )
        self._seed_row(
            "sys_properties",
            "glide.sys.default.tz",
            {"name": "glide.sys.default.tz", "value": self.options.system_time_zone},
        )
        choices: list[tuple[str, str, str]] = [
            ("state", NEW, "New"),
            ("state", IN_PROGRESS, "In Progress"),
            ("state", ON_HOLD, "On Hold"),
            ("state", RESOLVED, "Resolved"),
            ("state", CLOSED, "Closed"),
            ("state", CANCELED, "Canceled"),
            ("incident_state", NEW, "New"),
            ("incident_state", IN_PROGRESS, "In Progress"),
            ("incident_state", ON_HOLD, "On Hold"),
            ("incident_state", RESOLVED, "Resolved"),
            ("incident_state", CLOSED, "Closed"),
            ("incident_state", CANCELED, "Canceled"),
            ("hold_reason", "1", "Awaiting Caller"),
            ("hold_reason", "3", "Awaiting Problem"),
            ("hold_reason", "4", "Awaiting Vendor"),
            ("hold_reason", "5", "Awaiting Change"),
            ("impact", "1", "1 - High"),
            ("impact", "2", "2 - Medium"),
            ("impact", "3", "3 - Low"),
            ("urgency", "1", "1 - High"),
            ("urgency", "2", "2 - Medium"),
            ("urgency", "3", "3 - Low"),
            ("severity", "1", "1 - High"),
            ("severity", "2", "2 - Medium"),
            ("severity", "3", "3 - Low"),
            ("priority", "1", "1 - Critical"),
            ("priority", "2", "2 - High"),
            ("priority", "3", "3 - Moderate"),
            ("priority", "4", "4 - Low"),
            ("priority", "5", "5 - Planning"),
            ("category", "inquiry", "Inquiry / Help"),
            ("category", "software", "Software"),
            ("category", "hardware", "Hardware"),
            ("category", "network", "Network"),
            ("category", "database", "Database"),
        ]
        for seq, (element, value, label) in enumerate(choices):
            self._seed_row(
                "sys_choice",
                f"incident:{element}:{value}",
                {
                    "name": "incident",
                    "element": element,
                    "value": value,
                    "label": label,
                    "sequence": str(seq),
                },
            )
        current = self.options.close_codes == "current"
        for generation, codes in (("current", CURRENT_CLOSE_CODES), ("legacy", LEGACY_CLOSE_CODES)):
            active = (generation == "current") == current
            for seq, code in enumerate(codes):
                self._seed_row(
                    "sys_choice",
                    f"incident:close_code:{code}",
                    {
                        "name": "incident",
                        "element": "close_code",
                        "value": code,
                        "label": code,
                        "sequence": str(seq),
                        "inactive": "false" if active else "true",
                    },
                )

    def refresh_choices(self) -> None:
        """Rebuild the choice-label cache and the valid close codes from ``sys_choice``."""
        self._choice_labels = {}
        self._valid_close_codes = set()
        for row in self.tables["sys_choice"].values():
            key = (row["name"], row["element"], row["value"])
            if row.get("inactive") != "true" or key not in self._choice_labels:
                self._choice_labels[key] = row["label"]
            if (
                row["name"] == "incident"
                and row["element"] == "close_code"
                and row.get("inactive") != "true"
            ):
                self._valid_close_codes.add(row["value"])

    # ------------------------------------------------------------------ helpers
    def now(self) -> datetime:
        return self.clock.now().astimezone(UTC).replace(microsecond=0)

    def now_str(self) -> str:
        return self.now().strftime(SN_DATETIME_FORMAT)

    def new_sys_id(self) -> str:
        return f"{self.rng.getrandbits(128):032x}"

    @staticmethod
    def blank(table: str) -> dict[str, str]:
        return {
            name: ("" if fdef.kind == "journal" else fdef.default)
            for name, fdef in SCHEMAS[table].items()
        }

    def user(self, user_name: str) -> User:
        for row in self.tables["sys_user"].values():
            if row["user_name"] == user_name:
                return User(row["sys_id"], user_name)
        return User("", user_name)

    def user_zone(self, user: User) -> ZoneInfo:
        row = self.tables["sys_user"].get(user.sys_id, {})
        names = [row.get("time_zone", "")]
        names += [
            p["value"]
            for p in self.tables["sys_properties"].values()
            if p["name"] == "glide.sys.default.tz"
        ]
        for name in names:
            if name:
                try:
                    return ZoneInfo(name)
                except (ZoneInfoNotFoundError, ValueError):
                    continue
        return ZoneInfo("UTC")

    def choice_label(self, table: str, element: str, value: str) -> str | None:
        return self._choice_labels.get((table, element, value))

    def display(self, table: str, sys_id: str) -> str:
        row = self.tables.get(table, {}).get(sys_id)
        if row is None:
            return ""
        return row.get(DISPLAY_FIELDS.get(table, "sys_id"), "")

    def resolve(self, table: str, row: Mapping[str, str], path: str) -> tuple[str, FieldDef, str]:
        """Value of a possibly dot-walked field: (value, its definition, its table)."""
        parts = path.split(".")
        schema = SCHEMAS[table]
        current: Mapping[str, str] | None = row
        for part in parts[:-1]:
            fdef = schema[part]
            assert fdef.ref is not None
            target = fdef.ref
            value = current.get(part, "") if current is not None else ""
            current = self.tables[target].get(value)
            table, schema = target, SCHEMAS[target]
        last = parts[-1]
        value = current.get(last, "") if current is not None else ""
        return value, schema[last], table

    @staticmethod
    def valid_path(table: str, path: str) -> bool:
        schema = SCHEMAS[table]
        parts = path.split(".")
        for part in parts[:-1]:
            fdef = schema.get(part)
            if fdef is None or fdef.kind != "reference" or fdef.ref not in SCHEMAS:
                return False
            schema = SCHEMAS[fdef.ref]
        return parts[-1] in schema

    # ------------------------------------------------------------------ journals
    def journal_text(self, table: str, sys_id: str, elements: Iterable[str], zone: ZoneInfo) -> str:
        wanted = set(elements)
        entries = [
            row
            for row in self.tables["sys_journal_field"].values()
            if row["element_id"] == sys_id and row["name"] == table and row["element"] in wanted
        ]
        entries.sort(
            key=lambda r: (r["sys_created_on"], self.journal_order.get(r["sys_id"], 0)),
            reverse=True,
        )
        parts = []
        for entry in entries:
            when = to_zone(entry["sys_created_on"], zone)
            who = self.user(entry["sys_created_by"])
            name = self.display("sys_user", who.sys_id) or entry["sys_created_by"]
            label = JOURNAL_LABELS.get(entry["element"], entry["element"])
            parts.append(f"{when} - {name} ({label})\n{entry['value']}\n\n")
        return "".join(parts)

    def _add_journal(self, table: str, sys_id: str, element: str, text: str, user: User) -> None:
        jid = self.new_sys_id()
        now = self.now_str()
        self._journal_seq += 1
        self.journal_order[jid] = self._journal_seq
        self.tables["sys_journal_field"][jid] = {
            **self.blank("sys_journal_field"),
            "sys_id": jid,
            "name": table,
            "element": element,
            "element_id": sys_id,
            "value": text,
            "sys_created_on": now,
            "sys_created_by": user.user_name,
            "sys_updated_on": now,
            "sys_updated_by": user.user_name,
            "sys_mod_count": "0",
        }

    # ------------------------------------------------------------------ writes
    def _clean(self, table: str, body: Mapping[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
        """Writable values (strings) and journal entries; unknown and sys_* fields dropped."""
        schema = SCHEMAS[table]
        values: dict[str, str] = {}
        journals: dict[str, str] = {}
        for name, raw in body.items():
            fdef = schema.get(name)
            if fdef is None or name.startswith("sys_"):
                continue  # unknown fields and sys_* fields are ignored, like the platform
            text = _as_string(raw)
            text = self._fit(name, text, SN_JOURNAL_MAX if fdef.kind == "journal" else fdef.max_len)
            if fdef.kind == "journal":
                if name in JOURNAL_LABELS and text.strip():
                    journals[name] = text
                continue
            values[name] = text
        return values, journals

    def _fit(self, name: str, text: str, max_len: int | None) -> str:
        if max_len is None or len(text) <= max_len:
            return text
        if self.options.overlong == "reject":
            raise SNError(
                403,
                "Operation Failed",
                f"Field {name} exceeds its maximum length of {max_len} characters",
            )
        return text[:max_len]

    def insert(self, table: str, body: Mapping[str, Any], user: User) -> dict[str, str]:
        values, journals = self._clean(table, body)
        supplied = body.get("sys_id")
        rows = self.tables[table]
        if isinstance(supplied, str) and SUPPLIED_SYS_ID_RE.fullmatch(supplied):
            folded = supplied.lower()  # the column's collation ignores case [inferred]
            if supplied in rows or any(key.lower() == folded for key in rows):
                raise SNError(
                    403,
                    "Operation Failed",
                    f"Error during insert of {table} (duplicate sys_id {supplied})",
                )
            sys_id = supplied
        else:
            sys_id = self.new_sys_id()
        row = self.blank(table)
        row.update(values)
        now = self.now_str()
        if table == "incident":
            if not values.get("number"):
                row["number"] = f"INC{self.next_number:07d}"
                self.next_number += 1
            row["opened_by"] = values.get("opened_by") or user.sys_id
            row["opened_at"] = values.get("opened_at") or now
            row["priority"] = PRIORITY_MATRIX.get((row["impact"], row["urgency"]), row["priority"])
            self._incident_rules(None, row, user, now)
        row.update(
            sys_id=sys_id,
            sys_created_on=now,
            sys_created_by=user.user_name,
            sys_updated_on=now,
            sys_updated_by=user.user_name,
            sys_mod_count="0",
        )
        rows[sys_id] = row
        for element, text in journals.items():
            self._add_journal(table, sys_id, element, text, user)
        if table == "sys_choice":
            self.refresh_choices()
        return row

    def update(
        self, table: str, sys_id: str, body: Mapping[str, Any], user: User
    ) -> dict[str, str]:
        old = self.tables[table].get(sys_id)
        if old is None:
            raise not_found()
        values, journals = self._clean(table, body)
        row = dict(old)
        row.update(values)
        now = self.now_str()
        if table == "incident":
            if "impact" in values or "urgency" in values:
                row["priority"] = PRIORITY_MATRIX.get(
                    (row["impact"], row["urgency"]), row["priority"]
                )
            self._incident_rules(old, row, user, now)
        if row == old and not journals:
            return old  # a no-op update is skipped: no sys_mod_count, no sys_updated_on
        row["sys_mod_count"] = str(int(old.get("sys_mod_count") or "0") + 1)
        row["sys_updated_on"] = now
        row["sys_updated_by"] = user.user_name
        self.tables[table][sys_id] = row
        for element, text in journals.items():
            self._add_journal(table, sys_id, element, text, user)
        if table == "sys_choice":
            self.refresh_choices()
        return row

    def delete(self, table: str, sys_id: str) -> None:
        if self.tables[table].pop(sys_id, None) is None:
            raise not_found()
        if table == "sys_choice":
            self.refresh_choices()

    def _incident_rules(
        self,
        old: Mapping[str, str] | None,
        row: dict[str, str],
        user: User,
        now: str,
    ) -> None:
        """Business rules and data policies of ``incident`` (docs 3.2-3.4)."""
        old_state = old["state"] if old is not None else None
        state = row["state"]
        if (
            old_state is not None
            and old_state in self.options.terminal_states
            and state != old_state
        ):
            raise SNError(
                403,
                "Operation Failed",
                f"Incident {row['number']} is {self._state_label(old_state)} and cannot "
                f"change state (a new incident must be created)",
            )
        missing = []
        if state in {RESOLVED, CLOSED}:
            if row["close_code"] not in self._valid_close_codes:
                missing.append("Resolution code")  # an invalid code counts as missing
            if not row["close_notes"].strip():
                missing.append("Close notes")
        if state == ON_HOLD and self.options.hold_reason_required and not row["hold_reason"]:
            missing.append("On hold reason")
        if missing:
            raise SNError(
                403,
                "Operation Failed",
                "Data Policy Exception: \n\tThe following fields are mandatory: "
                + ", ".join(missing),
            )
        row["incident_state"] = state
        row["active"] = "false" if state in {CLOSED, CANCELED} else "true"
        if state != old_state:
            if state == RESOLVED:
                row["resolved_at"] = now
                row["resolved_by"] = user.sys_id
            if state == CLOSED:
                row["closed_at"] = now
                row["closed_by"] = user.sys_id
                if not row["resolved_at"]:
                    row["resolved_at"] = now
                    row["resolved_by"] = user.sys_id
            if old_state == RESOLVED and state in {NEW, IN_PROGRESS, ON_HOLD}:
                row["reopen_count"] = str(int(row["reopen_count"] or "0") + 1)
                row["reopened_by"] = user.sys_id
                row["reopened_time"] = now

    def _state_label(self, state: str) -> str:
        return self.choice_label("incident", "state", state) or state


def _as_string(raw: Any) -> str:
    if raw is None:
        return ""
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, str):
        return raw
    if isinstance(raw, (int, float)):
        return str(raw)
    if isinstance(raw, dict) and isinstance(raw.get("value"), (str, int)):
        return str(raw["value"])
    raise bad_request(f"Unsupported value type {type(raw).__name__} in the payload")
