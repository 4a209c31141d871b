"""Settings for bpsync, loaded with pydantic-settings.

Priority, highest first: CLI flags (passed as init arguments) > environment
(``BPSYNC_`` prefix, ``__`` for nesting, e.g. ``BPSYNC_SERVICENOW__URL``) > ``.env``
> TOML file (``--config PATH`` or ``BPSYNC_CONFIG``) > defaults.

Every secret is a ``SecretStr``. A secret may also be given as ``<name>_file``
(``BPSYNC_SERVICENOW__PASSWORD_FILE=/run/credentials/bpsync/sn_password``, or
``password_file = "..."`` in TOML): the file's content, stripped of its trailing
newline, becomes the secret. This is how Docker secrets and systemd ``LoadCredential``
reach the daemon.

Durations accept a number of seconds or a string with a unit: ``"500ms"``, ``"15s"``,
``"30m"``, ``"2h"``, ``"1d"``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from sync.bpql import compile_bpql
from sync.clients.pacing import PacingPolicy
from sync.errors import ConfigError

#: the shortest ``status_token`` accepted (a guessable token protects nothing)
STATUS_TOKEN_MIN_CHARS = 16

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: object) -> object:
    """Turn ``"30m"`` into ``1800.0``; numbers pass through; other values go to pydantic."""
    if isinstance(value, str):
        match = _DURATION_RE.match(value)
        if match is None:
            raise ValueError(f"not a duration: {value!r} (use seconds or e.g. 500ms, 15s, 30m, 2h)")
        return float(match.group(1)) * _UNIT_S[match.group(2)]
    return value


Duration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]
"""A length of time in seconds (float), accepting unit strings in config."""


def _split_csv(value: object) -> object:
    """Accept ``"a, b"`` as well as ``["a", "b"]`` for list settings (the seed uses CSV)."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


CsvList = Annotated[list[str], NoDecode, BeforeValidator(_split_csv)]


def read_secret_files(data: Any, names: tuple[str, ...]) -> Any:
    """Replace ``<name>_file`` keys by the named file's content (when ``<name>`` is unset)."""
    if not isinstance(data, Mapping):
        return data
    out = dict(data)
    for name in names:
        path = out.pop(f"{name}_file", None)
        if path is None or out.get(name) not in (None, ""):
            continue
        try:
            out[name] = Path(str(path)).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise ValueError(f"cannot read {name}_file {path!s}: {exc.strerror}") from None
    return out


class _Section(BaseModel):
    """Base of every settings section: unknown keys are an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    #: names of the ``SecretStr`` fields that may be given as ``<name>_file``
    _secret_fields: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="before")
    @classmethod
    def _read_secret_files(cls, data: Any) -> Any:
        return read_secret_files(data, cls._secret_fields)


class ServiceNowSettings(_Section):
    """``[servicenow]``: where the ServiceNow instance is and how to log in."""

    _secret_fields: ClassVar[tuple[str, ...]] = ("password", "client_secret")

    instance: str | None = None
    """Instance name: ``acme`` means ``https://acme.service-now.com``."""
    url: str | None = None
    """Full base URL (on-premise, proxy, emulator). Wins over ``instance``."""
    username: str | None = None
    password: SecretStr | None = None
    client_id: str | None = None
    """OAuth client id: with it, the password grant at ``/oauth_token.do`` is used."""
    client_secret: SecretStr | None = None
    table: str = "incident"
    verify_tls: bool = True
    timeout: Duration = 30.0
    max_concurrency: int = Field(default=8, ge=1, le=256)
    page_size: int = Field(default=100, ge=1, le=10000)
    """Rows per page of the incremental poll."""

    @field_validator("instance")
    @classmethod
    def _instance_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]*", value):
            raise ValueError("instance is a bare name such as 'acme'; use url for a full URL")
        return value

    @field_validator("url")
    @classmethod
    def _url_scheme(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("url must start with http:// or https:// and name a host")
        return value.rstrip("/") if value else value

    @property
    def base_url(self) -> str | None:
        """The instance's base URL, or None when neither ``url`` nor ``instance`` is set."""
        if self.url:
            return self.url
        if self.instance:
            return f"https://{self.instance}.service-now.com"
        return None

    @property
    def uses_oauth(self) -> bool:
        return self.client_id is not None


class BigPandaSettings(_Section):
    """``[bigpanda]``: the BigPanda API and which environments are shared."""

    _secret_fields: ClassVar[tuple[str, ...]] = ("bearer_token", "api_key")

    url: str = "https://api.bigpanda.io"
    bearer_token: SecretStr | None = None
    """Org token: used for ``/data/v2/alerts``."""
    api_key: SecretStr | None = None
    """User API key: used for ``/resources/v2.0``."""
    environments: CsvList = Field(default_factory=list)
    """Environment ids whose incidents are shared; empty means every environment."""
    ui_url: str = "https://a.bigpanda.io"
    """Base of the BigPanda web UI, for links in descriptions."""
    rate_limit_per_s: float = Field(default=5.0, gt=0)
    """Requests per second per endpoint family (BigPanda's documented ceiling is 5)."""
    timeout: Duration = 30.0
    verify_tls: bool = True

    @field_validator("url", "ui_url")
    @classmethod
    def _url_scheme(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must start with http:// or https:// and name a host")
        return value.rstrip("/")


class TagMappingRule(_Section):
    """One ``[[tag_mapping]]`` row: a BigPanda incident tag <-> a ServiceNow field."""

    bigpanda_tag: str = Field(min_length=1)
    servicenow_field: str = Field(min_length=1, pattern=r"^[a-z_][a-z0-9_]*$")
    direction: Literal["bp_to_sn", "sn_to_bp", "both"] = "both"
    value_map: dict[str, str] | None = None
    """BigPanda value -> ServiceNow value; the reverse direction uses the inverse map."""
    label: bool = False
    """A choice field carried by its label (``1 - High``) instead of its value (``1``):
    the map is built from ServiceNow's choices (``sys_choice``) at start."""

    @model_validator(mode="after")
    def _label_or_map(self) -> TagMappingRule:
        if self.label and self.value_map:
            raise ValueError(
                f"tag_mapping row {self.bigpanda_tag} <-> {self.servicenow_field}: label = "
                "true builds the map from ServiceNow's choice labels; give it or a value_map"
            )
        return self

    @model_validator(mode="after")
    def _priority_needs_levels(self) -> TagMappingRule:
        # BigPanda's built-in Priority tag takes only its levels (P1..P5): a row writing
        # it must say which level each ServiceNow value is, or it is refused here
        if (
            self.bigpanda_tag == "priority"
            and self.direction in ("sn_to_bp", "both")
            and not self.value_map
        ):
            raise ValueError(
                f"tag_mapping row priority <-> {self.servicenow_field}: priority is "
                "BigPanda's Priority-type tag; writing it needs a value_map from its "
                'levels to ServiceNow values (e.g. {"P1" = "1", "P2" = "2"}), or use '
                'direction = "bp_to_sn"'
            )
        return self


class IncidentSettings(_Section):
    """``[incidents]``: the BigPanda ServiceNow integration's settings, one for one."""

    assignment_group: str | None = None
    caller_id_email: str | None = None
    opened_by_email: str | None = None
    resolved_by_email: str | None = None
    cmdb_ci_tag: str | None = None
    """Alert tag of the primary alert whose value names the CI (e.g. ``host``)."""
    primary_alert: str = "status=critical, startedOn"
    priority_in_short_description: bool = True
    aia_in_description: bool = False
    aia_tag: str = Field(default="ai_summary", min_length=1)
    """Incident tag holding BigPanda's AI incident analysis summary (docs 9: check the id
    in the organisation's tag definitions)."""
    description_incident_tags: CsvList = Field(default_factory=list)
    description_alert_tags: CsvList = Field(default_factory=list)
    max_alerts_in_description: int = Field(default=5, ge=0, le=100)
    links_in_description: bool = True
    description_to_work_notes: bool = False
    resolve_servicenow: bool = True
    resolve_bigpanda: bool = True
    send_closure_code: bool = True
    reopen_resolved: bool = True
    reopen_window: Duration = 1800.0
    update_fields: CsvList | None = None
    """ServiceNow fields updated after the create; None means every mapped field."""
    link_tag: str = "servicenow_link"
    conflict_policy: Literal["newest", "bigpanda", "servicenow"] = "newest"
    close_code: str = "Solution provided"
    """Resolution code sent when bpsync resolves a ServiceNow incident."""
    close_notes: str = "Resolved in BigPanda"
    static_fields: dict[str, str] = Field(default_factory=dict)
    """ServiceNow fields every created incident gets (the seed's ``x-bp-field-<name>``
    overrides), e.g. ``{contact_type = "monitoring", u_source = "BigPanda"}``; a mapped
    value for the same field wins."""
    opened_at_from_start: bool = True
    """``opened_at`` of a created incident = the BigPanda incident's start (UTC)."""
    hold_to_snooze: bool = False
    """ServiceNow On Hold <-> BigPanda snooze: On Hold snoozes the BigPanda incident,
    leaving it unsnoozes it; a snooze and an unsnooze set and clear On Hold."""
    snooze_max: Duration = Field(default=89 * 86400.0, gt=0, le=90 * 86400.0)
    """How long an On Hold snoozes the BigPanda incident (snoozes near 90 days fail)."""
    hold_reason: str = Field(default="1", min_length=1)
    """``hold_reason`` written with On Hold from a BigPanda snooze (1: Awaiting Caller)."""
    on_merge: Literal["adopt", "resolve_source"] = "adopt"
    """A linked incident merged into another (``sync.merges``): ``adopt``: a destination
    without a ticket takes the source's, a source left with its own ticket keeps it open;
    ``resolve_source``: the source's ticket is resolved as a duplicate."""
    merge_close_code: str = Field(default="Duplicate", min_length=1)
    """Resolution code of a source's ticket resolved by ``on_merge = "resolve_source"``."""
    sync_assignee: bool = False
    """BigPanda assignee <-> ServiceNow ``assigned_to``, matched by e-mail (``sys_user``
    and BigPanda's SCIM Users API, cached); a person not found (or, in ServiceNow, two
    users sharing the e-mail) leaves the other side as it is, with one WARNING."""

    @field_validator("static_fields")
    @classmethod
    def _static_fields_writable(cls, value: dict[str, str]) -> dict[str, str]:
        owned = {"number", "state", "active", "correlation_id", "correlation_display"}
        for name in value:
            if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
                raise ValueError(f"static_fields: {name!r} is not a ServiceNow field name")
            if name in owned or name.startswith("sys_"):
                raise ValueError(f"static_fields: {name} is set by ServiceNow or by bpsync itself")
        return value


class JournalSettings(_Section):
    """``[journal]``: the conversation carried both ways, each entry once (``sync.journal``)."""

    to_servicenow: Literal["work_notes", "comments", "off"] = "work_notes"
    """Where each BigPanda comment goes: a ServiceNow work note (the seed's default),
    an additional comment, or nowhere."""
    from_servicenow: CsvList = Field(default_factory=list)
    """Which ServiceNow journal entries become BigPanda comments: ``work_notes``,
    ``comments``, both, or none (the default: nothing reached BigPanda before)."""

    @field_validator("from_servicenow")
    @classmethod
    def _journal_kinds(cls, value: list[str]) -> list[str]:
        for kind in value:
            if kind not in ("work_notes", "comments"):
                raise ValueError(f"{kind!r} is not a journal: use work_notes and/or comments")
        return list(dict.fromkeys(value))


class RetrySettings(_Section):
    """``[retry]``: the seed's promise (6 tries, 15 min apart, DLQ after 5, notify after 6)."""

    attempts: int = Field(default=6, ge=1)
    interval: Duration = 900.0
    dlq_after: int = Field(default=5, ge=1)
    notify_after: int = Field(default=6, ge=1)
    in_cycle_attempts: int = Field(default=3, ge=1)
    """Tries inside one cycle (short backoff) before the write waits for ``interval``."""
    in_cycle_backoff: Duration = 0.5
    """First in-cycle delay; doubled each try, capped by ``in_cycle_backoff_max``."""
    in_cycle_backoff_max: Duration = 10.0
    notify_url: str | None = None


class ShareSettings(_Section):
    """``[share]``: which BigPanda incidents get a ServiceNow ticket (besides
    ``bigpanda.environments``). An incident that stops matching keeps its link."""

    filter: str = ""
    """BPQL over the incident's status, severity and tags (``severity = critical AND
    NOT env = test``); empty: every incident. Checked at start."""
    delay: Duration = 0.0
    """Create only once the incident is this old (BigPanda recommends about 3 minutes,
    so AI tags arrive first); 0: at once."""
    manual_tag: str | None = None
    """An incident with this tag set to ``true`` gets a ticket whatever the filter and
    the delay (a person asked for one)."""

    @field_validator("filter")
    @classmethod
    def _filter_compiles(cls, value: str) -> str:
        try:
            compile_bpql(value)
        except ValueError as exc:
            raise ValueError(f"share.filter is not valid BPQL: {exc}") from None
        return value


class GuardSettings(_Section):
    """``[guard]``: refuse mass changes until an operator confirms (``bpsync run --force``)."""

    max_resolve_fraction: float = Field(default=0.5, gt=0, le=1)
    min_links: int = Field(default=10, ge=0)
    """The guards only apply once there are at least this many live links."""
    empty_side_check: bool = True
    flip_flop_changes: int = Field(default=6, ge=1)
    """A mapped field bpsync writes back to a value it already wrote more than this
    often within ``flip_flop_window`` (a business rule or an enrichment fighting
    bpsync) is frozen for that pair."""
    flip_flop_window: Duration = 600.0


class PacingSettings(_Section):
    """``[pacing]``: how close to the APIs' limits bpsync runs, and when throttling becomes
    an outage (see :mod:`sync.clients.pacing`)."""

    headroom: float = Field(default=0.9, gt=0, le=1)
    """Share of the documented ceiling each BigPanda endpoint family is paced at."""
    backoff_factor: float = Field(default=0.5, gt=0, lt=1)
    """Pace (BigPanda) or requests at once (ServiceNow) multiplied by this after a 429."""
    min_fraction: float = Field(default=0.1, gt=0, le=1)
    """A family is never paced below this share of its ceiling."""
    recover_after: Duration = 5.0
    """Quiet period after which the pace grows one step back towards the target."""
    recover_step: float = Field(default=0.1, gt=0, le=1)
    """Share of the target pace added per quiet period."""
    hold: Duration = 1.0
    """Wait after a 429 without Retry-After (doubles per consecutive 429)."""
    hold_max: Duration = 30.0
    outage_after: Duration = 60.0
    """Every request of a side failing this long is an outage: the cycle stops."""
    quiet: Duration = 30.0
    """A family's throttling has ended after this long without a 429 (for the log line)."""

    @model_validator(mode="after")
    def _floor_below_target(self) -> PacingSettings:
        if self.min_fraction > self.headroom:
            raise ValueError("min_fraction must not exceed headroom")
        return self

    def policy(self) -> PacingPolicy:
        return PacingPolicy(
            headroom=self.headroom,
            backoff_factor=self.backoff_factor,
            min_fraction=self.min_fraction,
            recover_after_s=self.recover_after,
            recover_step=self.recover_step,
            hold_s=self.hold,
            hold_max_s=self.hold_max,
            outage_after_s=self.outage_after,
            quiet_s=self.quiet,
        )


class PushSettings(_Section):
    """``[push]``: changes pushed by webhooks (``POST /webhooks/bigpanda`` and
    ``/webhooks/servicenow`` on ``http_port``), polling kept to reconcile (``sync.push``)."""

    _secret_fields: ClassVar[tuple[str, ...]] = ("bigpanda_token", "servicenow_token")

    enabled: bool = False
    bigpanda_token: SecretStr | None = None
    """``Authorization: Bearer <token>`` BigPanda's webhook sends; unset: no receiver."""
    servicenow_token: SecretStr | None = None
    """``Authorization: Bearer <token>`` the business rule sends; unset: no receiver."""
    max_body: int = Field(default=1024 * 1024, ge=1024)
    """Largest request body accepted, in bytes (413 above it, the body is not read)."""
    max_concurrent: int = Field(default=32, ge=1, le=1024)
    """Requests handled at once per receiver; more are answered 503 (sent again later)."""
    reconcile_interval: Duration | None = None
    """The poll's interval while push is on (it catches what a lost webhook missed);
    unset: ``poll_interval``."""

    @model_validator(mode="after")
    def _a_receiver(self) -> PushSettings:
        if self.enabled and not (self.bigpanda_token or self.servicenow_token):
            raise ValueError("enabled needs bigpanda_token or servicenow_token (or both)")
        return self


class Settings(BaseSettings):
    """All of bpsync's settings. Build it with :func:`load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix="BPSYNC_",
        env_nested_delimiter="__",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="forbid",
        validate_default=True,
    )

    #: set by load_settings() before instantiation; read by settings_customise_sources
    _toml_path: ClassVar[Path | None] = None

    servicenow: ServiceNowSettings = Field(default_factory=ServiceNowSettings)
    bigpanda: BigPandaSettings = Field(default_factory=BigPandaSettings)
    incidents: IncidentSettings = Field(default_factory=IncidentSettings)
    tag_mapping: list[TagMappingRule] = Field(default_factory=list)
    journal: JournalSettings = Field(default_factory=JournalSettings)
    retry: RetrySettings = Field(default_factory=RetrySettings)
    guard: GuardSettings = Field(default_factory=GuardSettings)
    share: ShareSettings = Field(default_factory=ShareSettings)
    pacing: PacingSettings = Field(default_factory=PacingSettings)
    push: PushSettings = Field(default_factory=PushSettings)
    pairs: list[dict[str, Any]] = Field(default_factory=list)
    """``[[pairs]]``: several BigPanda org <-> ServiceNow instance pairs in one process,
    each overriding the sections above field by field (:mod:`sync.pairconfig`)."""

    state_dir: Path = Path("./var")
    database_url: SecretStr | None = None
    """SQLAlchemy URL; a SecretStr because it may hold a password (``database_url_file`` too)."""
    poll_interval: Duration = 15.0
    cursor_overlap: Duration = 30.0
    """How far back each incremental poll reaches past its cursor (clock skew, commits)."""
    retrieval_count: int = Field(default=20, ge=1, le=100)
    """BigPanda page size for polls and backfill."""
    cycle_budget: Duration = 60.0
    """A cycle starts no new work after this long, except the new incidents whose search
    page it has read already (sent, not read again: at most ``pair_concurrency`` and a
    page more); the rest waits for the next cycle (what was done is recorded, cursors
    included: a storm is worked through across cycles, oldest first)."""
    pair_concurrency: int = Field(default=10, ge=1, le=100)
    """Pairs (incidents) executed at once in a cycle; each pair's writes stay in order."""
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "json"
    status_token: SecretStr | None = None
    """When set, the status page (``GET /``, ``/status.json``) asks for it: ``Authorization:
    Bearer <token>``, or HTTP Basic with the token as password (``status_token_file`` too)."""
    # the ``_file`` forms of the top-level secrets, declared so that the environment
    # (``BPSYNC_STATUS_TOKEN_FILE``) reaches them; read (and emptied) before validation
    database_url_file: Path | None = Field(default=None, exclude=True, repr=False)
    status_token_file: Path | None = Field(default=None, exclude=True, repr=False)

    @model_validator(mode="before")
    @classmethod
    def _read_database_url_file(cls, data: Any) -> Any:
        return read_secret_files(data, ("database_url", "status_token"))

    @field_validator("status_token")
    @classmethod
    def _status_token_strong(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        token = value.get_secret_value()
        if len(token) < STATUS_TOKEN_MIN_CHARS or any(c.isspace() for c in token):
            raise ValueError(
                f"must be at least {STATUS_TOKEN_MIN_CHARS} characters without spaces "
                "(e.g. `openssl rand -hex 32`); leave it unset for a page without a token"
            )
        return value

    @model_validator(mode="after")
    def _assignee_owned(self) -> Settings:
        """``sync_assignee`` owns ``assigned_to``: a mapping row writing it would fight it."""
        if self.incidents.sync_assignee:
            for row in self.tag_mapping:
                if row.servicenow_field == "assigned_to":
                    raise ValueError(
                        f"tag_mapping row {row.bigpanda_tag} <-> assigned_to: with "
                        "incidents.sync_assignee the assignee is synced by bpsync itself; "
                        "remove the row or set sync_assignee = false"
                    )
        return self

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @property
    def effective_database_url(self) -> str:
        """``database_url``, or the embedded SQLite file in ``state_dir``."""
        if self.database_url and self.database_url.get_secret_value():
            return self.database_url.get_secret_value()
        return f"sqlite+aiosqlite:///{(self.state_dir / 'bpsync.db').as_posix()}"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings, dotenv_settings]
        if cls._toml_path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=cls._toml_path))
        return tuple(sources)


def _deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def overrides_from_dotted(pairs: Mapping[str, Any]) -> dict[str, Any]:
    """``{"servicenow.url": "x"}`` -> ``{"servicenow": {"url": "x"}}`` (None values dropped)."""
    out: dict[str, Any] = {}
    for dotted, value in pairs.items():
        if value is None:
            continue
        node: dict[str, Any] = {}
        leaf = node
        parts = dotted.split(".")
        for part in parts[:-1]:
            leaf[part] = {}
            leaf = leaf[part]
        leaf[parts[-1]] = value
        out = _deep_merge(out, node)
    return out


def format_validation_error(exc: ValidationError) -> str:
    """One line per problem, each naming the setting: ``servicenow.timeout: ...``."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "settings"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown setting"
        lines.append(f"invalid setting {loc}: {msg}")
    return "; ".join(lines)


def load_settings(
    config_path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    env_file: str | Path | None = ".env",
) -> Settings:
    """Load settings from every source; raise :class:`ConfigError` naming a bad setting.

    ``config_path`` defaults to ``$BPSYNC_CONFIG``. ``overrides`` are CLI flags as dotted
    names (``{"servicenow.url": "http://..."}``); None values are ignored.
    """
    path_str = config_path if config_path is not None else os.environ.get("BPSYNC_CONFIG")
    path = Path(path_str) if path_str else None
    if path is not None and not path.is_file():
        raise ConfigError(f"config file not found: {path}", setting="config")
    Settings._toml_path = path
    try:
        init = overrides_from_dotted(overrides or {})
        settings = Settings(_env_file=env_file, **init)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None
    except (OSError, ValueError) as exc:  # TOML syntax errors are ValueErrors
        raise ConfigError(f"cannot read config {path}: {exc}", setting="config") from None
    finally:
        Settings._toml_path = None
    return settings


def redact_url(url: str) -> str:
    """Mask the password in ``scheme://user:password@host/...``."""
    return re.sub(r"(//[^:/@]+:)[^@/]+@", r"\1****@", url)
