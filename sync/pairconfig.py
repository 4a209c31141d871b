"""Sync pairs: ``[[pairs]]`` tables, each one BigPanda organisation with one ServiceNow
instance, expanded into one complete :class:`~sync.settings.Settings` per pair.

- Top-level sections are the defaults; a pair's own ``[pairs.servicenow]``,
  ``[pairs.bigpanda]``, ``[pairs.incidents]``, ``[pairs.journal]``, ``[pairs.share]``
  (and ``retry``, ``guard``, ``pacing``, ``push``) override them field by field; a pair's
  ``tag_mapping`` rows replace the top-level rows as a whole (a mapping is read as one
  table, a merge row by row would be a guess). Scalars such as ``poll_interval`` may be
  set per pair too.
- Process settings are not per pair: :data:`PROCESS_KEYS` in a pair table is an error.
- A configuration without ``[[pairs]]`` is one pair named :data:`DEFAULT_PAIR`.
- Each pair keeps its own state (links, cursors, outbox, dead letters, audit, its
  leader epoch): the pair named ``default`` uses the configured database as it is (an
  existing deployment keeps its data when it adds pairs), any other pair ``NAME``:
  SQLite ``<state_dir>/pairs/NAME/bpsync.db`` (embedded default) or ``<file>-NAME.db``
  beside a configured file; Postgres the schema ``bpsync_NAME`` (``search_path``; with
  a ``search_path`` already in the URL, ``<that>_NAME``), which also gives the pair its
  own advisory lock (:func:`sync.runtime.leader.advisory_key`). With several pairs,
  each pair's Postgres pool is small (:data:`SMALL_POOL`, unless the URL sizes it):
  every replica keeps every pair's store open.

No I/O here; :func:`overlaps` is what ``bpsync config check`` refuses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr, ValidationError
from sqlalchemy.engine import make_url

from sync.errors import ConfigError
from sync.settings import Settings, format_validation_error

#: the name of the one pair of a configuration without ``[[pairs]]``
DEFAULT_PAIR = "default"
#: a pair's name: also a file name, a schema suffix and a metric label
PAIR_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")
#: settings of the process, not of a pair (refused in a ``[[pairs]]`` table)
PROCESS_KEYS = frozenset(
    {
        "database_url",
        "database_url_file",
        "state_dir",
        "http_host",
        "http_port",
        "log_level",
        "log_format",
        "status_token",
        "status_token_file",
        "pairs",
    }
)
#: the pool of each pair's Postgres store when there are several pairs
SMALL_POOL = {"pool_size": "1", "max_overflow": "4"}
#: a pair's sections merged over the top-level ones field by field
_SECTIONS = (
    "servicenow",
    "bigpanda",
    "incidents",
    "journal",
    "share",
    "retry",
    "guard",
    "pacing",
    "push",
)


@dataclass(frozen=True, slots=True)
class PairConfig:
    """One pair: its name and its complete settings (process settings included)."""

    name: str
    settings: Settings


def _plain(value: Any) -> Any:
    """A dumped settings value with secrets revealed (they are validated again)."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if key in _SECTIONS and isinstance(value, dict) and isinstance(out.get(key), dict):
            section = dict(out[key])
            for field, given in value.items():
                if field.endswith("_file"):  # a secret given by file replaces the value
                    section.pop(field.removesuffix("_file"), None)
                section[field] = given
            out[key] = section
        else:
            out[key] = value
    return out


def pair_database_url(settings: Settings, name: str) -> str | None:
    """The configured ``database_url`` for pair ``name`` (None: the embedded default,
    which :func:`pair_state_dir` places)."""
    if settings.database_url is None or not settings.database_url.get_secret_value():
        return None
    url = settings.database_url.get_secret_value()
    if name == DEFAULT_PAIR:
        return url
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if not database or database == ":memory:" or database.startswith("file:"):
            raise ConfigError(
                f"pair {name!r}: an in-memory SQLite database cannot hold several pairs",
                setting="database_url",
            )
        path = Path(database)
        return parsed.set(
            database=str(path.with_name(f"{path.stem}-{name}{path.suffix}"))
        ).render_as_string(hide_password=False)
    given = parsed.query.get("search_path")
    schema = f"{given}_{name}" if given else f"bpsync_{name}"
    schema = schema.replace("-", "_")
    return parsed.update_query_dict({"search_path": schema}).render_as_string(hide_password=False)


def _small_pool(url: str | None) -> str | None:
    """A Postgres URL of one of several pairs with a small pool (unless one is set):
    every replica opens every pair's store, so 50 pairs of 5-connection pools would
    need 250 connections per replica; one kept open and four more at a busy moment."""
    if url is None:
        return None
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" or any(k in parsed.query for k in SMALL_POOL):
        return url
    return parsed.update_query_dict(SMALL_POOL).render_as_string(hide_password=False)


def pair_state_dir(settings: Settings, name: str) -> Path:
    """Where pair ``name`` keeps its embedded database (the default pair: ``state_dir``)."""
    if name == DEFAULT_PAIR:
        return settings.state_dir
    return settings.state_dir / "pairs" / name


def expand_pairs(settings: Settings) -> list[PairConfig]:
    """Every pair of ``settings`` with its complete settings; ConfigError naming the
    pair and the setting when a pair table is wrong."""
    if not settings.pairs:
        return [PairConfig(DEFAULT_PAIR, settings)]
    base = _plain(settings.model_dump(exclude={"pairs"}))
    seen: set[str] = set()
    out: list[PairConfig] = []
    for index, table in enumerate(settings.pairs):
        raw = dict(table)
        name = raw.pop("name", None)
        where = f"pairs[{index}]"
        if not isinstance(name, str) or not PAIR_NAME.fullmatch(name):
            raise ConfigError(
                f"invalid setting {where}.name: a pair needs a name of lower-case letters, "
                "digits, '-' and '_' (at most 40), e.g. name = \"prod\"",
                setting=f"{where}.name",
            )
        if name in seen:
            raise ConfigError(f"invalid setting {where}.name: pair {name!r} is named twice")
        seen.add(name)
        process = sorted(PROCESS_KEYS & raw.keys())
        if process:
            raise ConfigError(
                f"invalid setting pairs.{name}.{process[0]}: a process setting, not a pair's "
                "(set it at the top level)",
                setting=f"pairs.{name}.{process[0]}",
            )
        merged = _merge(base, raw)
        merged["database_url"] = _small_pool(pair_database_url(settings, name))
        merged["state_dir"] = pair_state_dir(settings, name)
        try:
            pair_settings = Settings.model_validate(merged)
        except ValidationError as exc:
            line = format_validation_error(exc).replace(
                "invalid setting ", f"invalid setting pairs.{name}."
            )
            raise ConfigError(line) from None
        out.append(PairConfig(name, pair_settings))
    return out


def select_pair(settings: Settings, name: str | None) -> PairConfig:
    """The pair ``name`` (None: the only pair; a configuration with several pairs needs
    ``--pair``)."""
    pairs = expand_pairs(settings)
    if name is None:
        if len(pairs) == 1:
            return pairs[0]
        names = ", ".join(p.name for p in pairs)
        raise ConfigError(f"this configuration has several pairs ({names}): choose one with --pair")
    for pair in pairs:
        if pair.name == name:
            return pair
    names = ", ".join(p.name for p in pairs)
    raise ConfigError(f"no pair named {name!r} (pairs: {names})", setting="pair")


def _servicenow_target(settings: Settings) -> tuple[str, str]:
    return ((settings.servicenow.base_url or "").rstrip("/").lower(), settings.servicenow.table)


def _bigpanda_org(settings: Settings) -> tuple[str, str]:
    """A BigPanda organisation as bpsync can tell it: the API and the org's credential."""
    token = settings.bigpanda.api_key or settings.bigpanda.bearer_token
    return (settings.bigpanda.url.lower(), token.get_secret_value() if token else "")


def overlaps(pairs: list[PairConfig]) -> list[str]:
    """One line per two pairs that would both create tickets for one incident: the same
    ServiceNow instance and table, the same BigPanda org, and environments that overlap
    (an empty list means every environment)."""
    problems: list[str] = []
    for i, first in enumerate(pairs):
        for second in pairs[i + 1 :]:
            a, b = first.settings, second.settings
            if _servicenow_target(a) != _servicenow_target(b) or _bigpanda_org(a) != _bigpanda_org(
                b
            ):
                continue
            envs_a, envs_b = set(a.bigpanda.environments), set(b.bigpanda.environments)
            if envs_a and envs_b and not envs_a & envs_b:
                continue
            shared = (
                ", ".join(sorted(envs_a & envs_b)) if envs_a and envs_b else "every environment"
            )
            problems.append(
                f"pairs {first.name!r} and {second.name!r} write the same ServiceNow instance "
                f"from the same BigPanda org with overlapping environments ({shared}): "
                "an incident would get two tickets"
            )
    return problems


__all__ = [
    "DEFAULT_PAIR",
    "PAIR_NAME",
    "PROCESS_KEYS",
    "PairConfig",
    "expand_pairs",
    "overlaps",
    "pair_database_url",
    "pair_state_dir",
    "select_pair",
]
