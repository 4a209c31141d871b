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
from typing import Any, ClassVar, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from sync.errors import ConfigError
from sync.settings_sections import (
    STATUS_TOKEN_MIN_CHARS,
    BigPandaSettings,
    Duration,
    GuardSettings,
    IncidentSettings,
    JournalSettings,
    PacingSettings,
    PushSettings,
    RetrySettings,
    ServiceNowSettings,
    ShareSettings,
    TagMappingRule,
    read_secret_files,
)

__all__ = [
    "STATUS_TOKEN_MIN_CHARS",
    "BigPandaSettings",
    "Duration",
    "GuardSettings",
    "IncidentSettings",
    "JournalSettings",
    "PacingSettings",
    "PushSettings",
    "RetrySettings",
    "ServiceNowSettings",
    "Settings",
    "ShareSettings",
    "TagMappingRule",
    "format_validation_error",
    "load_settings",
    "overrides_from_dotted",
    "read_secret_files",
    "redact_url",
]


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
