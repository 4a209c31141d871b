"""What of the settings is secret: every secret's value (for the log redaction filter)
and the settings as they may be shown (``bpsync config show``), secrets masked."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import SecretStr

from sync.settings import Settings, read_secret_files, redact_url


def redacted_dump(settings: Settings) -> dict[str, Any]:
    """The settings as plain data with every secret masked (for ``config show``)."""
    data: dict[str, Any] = settings.model_dump(mode="json")  # SecretStr dumps as '**********'
    data["database_url"] = redact_url(settings.effective_database_url)
    data["pairs"] = [_masked(table) for table in settings.pairs]
    return data


#: key names whose values are secrets wherever they appear (``[[pairs]]`` tables are raw)
_SECRET_KEYS = frozenset(
    {"password", "client_secret", "bearer_token", "api_key", "bigpanda_token", "servicenow_token"}
)


def _masked(node: Any) -> Any:
    if isinstance(node, Mapping):
        return {k: "**********" if k in _SECRET_KEYS and v else _masked(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_masked(v) for v in node]
    return node


def secret_values(settings: Settings) -> list[str]:
    """Every secret's plain value (for the log redaction filter)."""
    found: list[str] = []
    for section in (settings.servicenow, settings.bigpanda, settings.push):
        for name in type(section)._secret_fields:
            secret = getattr(section, name)
            if isinstance(secret, SecretStr) and secret.get_secret_value():
                found.append(secret.get_secret_value())
    if settings.status_token and settings.status_token.get_secret_value():
        found.append(settings.status_token.get_secret_value())
    if settings.database_url:
        match = re.search(r"//[^:/@]+:([^@/]+)@", settings.database_url.get_secret_value())
        if match:
            found.append(match.group(1))
    found.extend(v for v in _raw_secrets(settings.pairs) if v not in found)
    return found


def _raw_secrets(node: Any) -> list[str]:
    """The secrets written in raw tables (``[[pairs]]``): values of secret keys and the
    content of their ``<key>_file`` files."""
    out: list[str] = []
    if isinstance(node, list):
        for item in node:
            out.extend(_raw_secrets(item))
    elif isinstance(node, Mapping):
        plain = read_secret_files(node, tuple(_SECRET_KEYS))
        for key, value in plain.items():
            if key in _SECRET_KEYS and isinstance(value, str) and value:
                out.append(value)
            elif isinstance(value, (Mapping, list)):
                out.extend(_raw_secrets(value))
    return out


__all__ = ["redacted_dump", "secret_values"]
