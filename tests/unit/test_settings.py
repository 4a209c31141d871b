"""Settings: sources and their priority, secrets, durations, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from sync.errors import ConfigError
from sync.redaction import redacted_dump, secret_values
from sync.settings import load_settings

REPO = Path(__file__).resolve().parents[2]


def test_defaults() -> None:
    s = load_settings(env_file=None)
    assert s.poll_interval == 15.0
    assert s.retrieval_count == 20
    assert s.incidents.reopen_window == 1800.0
    assert s.incidents.primary_alert == "status=critical, startedOn"
    assert s.incidents.link_tag == "servicenow_link"
    assert s.incidents.conflict_policy == "newest"
    assert s.retry.attempts == 6 and s.retry.interval == 900.0
    assert s.retry.dlq_after == 5 and s.retry.notify_after == 6
    assert s.bigpanda.rate_limit_per_s == 5.0
    assert s.servicenow.table == "incident" and s.servicenow.verify_tls is True
    assert s.effective_database_url == "sqlite+aiosqlite:///var/bpsync.db"
    assert s.log_format == "json"


def test_example_config_is_valid() -> None:
    s = load_settings(REPO / "config" / "bpsync.example.toml", env_file=None)
    assert s.servicenow.base_url == "https://acme.service-now.com"
    assert [r.servicenow_field for r in s.tag_mapping] == ["impact", "urgency", "assignment_group"]
    assert s.tag_mapping[0].value_map == {
        "critical": "1",
        "warning": "2",
        "unknown": "3",
        "ok": "3",
    }


def test_priority_cli_over_env_over_dotenv_over_toml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text(
        'poll_interval = "1m"\nretrieval_count = 7\nhttp_port = 1\n[servicenow]\nurl = "http://toml"\n'
    )
    dotenv = tmp_path / ".env"
    dotenv.write_text("BPSYNC_RETRIEVAL_COUNT=8\nBPSYNC_HTTP_PORT=2\n")
    monkeypatch.setenv("BPSYNC_HTTP_PORT", "3")
    monkeypatch.setenv("BPSYNC_SERVICENOW__URL", "http://env/")
    s = load_settings(toml, {"servicenow.url": "http://cli"}, env_file=dotenv)
    assert s.poll_interval == 60.0  # toml
    assert s.retrieval_count == 8  # .env over toml
    assert s.http_port == 3  # env over .env
    assert s.servicenow.url == "http://cli"  # cli over env
    monkeypatch.setenv("BPSYNC_CONFIG", str(toml))
    assert load_settings(env_file=None).servicenow.url == "http://env"


def test_secret_file_and_redaction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cr3t-value\n")
    monkeypatch.setenv("BPSYNC_SERVICENOW__PASSWORD_FILE", str(secret))
    monkeypatch.setenv("BPSYNC_BIGPANDA__API_KEY", "key-value-123")
    monkeypatch.setenv("BPSYNC_DATABASE_URL", "postgresql+asyncpg://u:dbpass@h/db")
    s = load_settings(env_file=None)
    assert s.servicenow.password is not None
    assert s.servicenow.password.get_secret_value() == "s3cr3t-value"
    shown = repr(s) + str(redacted_dump(s))
    for value in ("s3cr3t-value", "key-value-123", "dbpass"):
        assert value not in shown
    assert set(secret_values(s)) == {"s3cr3t-value", "key-value-123", "dbpass"}


def test_missing_secret_file_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BPSYNC_BIGPANDA__API_KEY_FILE", "/nonexistent/key")
    with pytest.raises(ConfigError, match=r"bigpanda: .*api_key_file /nonexistent/key"):
        load_settings(env_file=None)


@pytest.mark.parametrize(
    ("env", "value", "match"),
    [
        ("BPSYNC_POLL_INTERVAL", "soon", r"invalid setting poll_interval: not a duration"),
        ("BPSYNC_INCIDENTS__CONFLICT_POLICY", "loudest", r"incidents\.conflict_policy"),
        ("BPSYNC_SERVICENOW__URL", "ftp://x", r"servicenow\.url: url must start with http"),
        ("BPSYNC_SERVICENOW__INSTANCE", "https://acme", r"servicenow\.instance"),
        ("BPSYNC_RETRY__ATTEMPTS", "0", r"retry\.attempts"),
    ],
)
def test_bad_setting_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, match: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError, match=match) as info:
        load_settings(env_file=None)
    assert "\n" not in str(info.value)


def test_unknown_toml_key_is_an_error(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text("[incidents]\nreopen_windw = 5\n")
    with pytest.raises(ConfigError, match=r"incidents\.reopen_windw: unknown setting"):
        load_settings(toml, env_file=None)


def test_durations_and_csv_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BPSYNC_INCIDENTS__REOPEN_WINDOW", "2h")
    monkeypatch.setenv("BPSYNC_RETRY__IN_CYCLE_BACKOFF", "250ms")
    monkeypatch.setenv("BPSYNC_INCIDENTS__DESCRIPTION_ALERT_TAGS", "host, check")
    s = load_settings(env_file=None)
    assert s.incidents.reopen_window == 7200.0
    assert s.retry.in_cycle_backoff == 0.25
    assert s.incidents.description_alert_tags == ["host", "check"]


def test_missing_config_file() -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings("/nonexistent.toml", env_file=None)


def test_every_setting_is_in_the_example_config() -> None:
    """Each field of Settings and of its sections is named in the example (set or
    commented), so a newcomer finds every setting there."""
    import re

    from sync.settings import Settings

    text = (REPO / "config" / "bpsync.example.toml").read_text()
    named = set(re.findall(r"^#?\s*([a-z_]+)\s*=", text, flags=re.MULTILINE))
    named |= set(re.findall(r"^#?\s*\[\[([a-z_]+)\]\]", text, flags=re.MULTILINE))
    sections = set(re.findall(r"^\[+([a-z_]+)\]+", text, flags=re.MULTILINE))
    missing = []
    for name, info in Settings.model_fields.items():
        section = info.annotation
        fields = getattr(section, "model_fields", None)
        if isinstance(fields, dict):
            if name not in sections:
                missing.append(f"[{name}]")
            missing += [f"{name}.{f}" for f in fields if f not in named]
        elif name not in named:
            missing.append(name)
    assert not missing, f"not in config/bpsync.example.toml: {missing}"


def test_status_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A top-level secret: from a file (the environment names the file), masked in
    ``config show``, redacted from logs, and refused when too short to protect."""
    token = tmp_path / "status_token"
    token.write_text("status-T0ken-from-a-file-42\n")
    monkeypatch.setenv("BPSYNC_STATUS_TOKEN_FILE", str(token))
    s = load_settings(env_file=None)
    assert s.status_token is not None
    assert s.status_token.get_secret_value() == "status-T0ken-from-a-file-42"
    assert "status-T0ken-from-a-file-42" in secret_values(s)
    dumped = str(redacted_dump(s))
    assert "status-T0ken-from-a-file-42" not in dumped
    assert "status_token_file" not in dumped
    monkeypatch.delenv("BPSYNC_STATUS_TOKEN_FILE")
    assert load_settings(env_file=None).status_token is None
    for weak in ("short", "sixteen chars  with spaces"):
        monkeypatch.setenv("BPSYNC_STATUS_TOKEN", weak)
        with pytest.raises(ConfigError, match=r"invalid setting status_token: must be at least 16"):
            load_settings(env_file=None)


def test_database_url_file_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``BPSYNC_DATABASE_URL_FILE`` (the systemd unit's way) reaches the setting."""
    url = tmp_path / "database_url"
    url.write_text("postgresql+asyncpg://bpsync:dbpass@db/bpsync\n")
    monkeypatch.setenv("BPSYNC_DATABASE_URL_FILE", str(url))
    s = load_settings(env_file=None)
    assert s.effective_database_url == "postgresql+asyncpg://bpsync:dbpass@db/bpsync"


def test_sync_assignee_refuses_a_mapping_row_writing_assigned_to(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    rows = (
        '[[tag_mapping]]\nbigpanda_tag = "owner"\nservicenow_field = "assigned_to"\n'
        'direction = "both"\n'
    )
    toml.write_text("[incidents]\nsync_assignee = true\n" + rows)
    with pytest.raises(ConfigError, match=r"owner <-> assigned_to: with incidents\.sync_assignee"):
        load_settings(toml, env_file=None)
    toml.write_text("[incidents]\nsync_assignee = false\n" + rows)
    assert load_settings(toml, env_file=None).tag_mapping[0].servicenow_field == "assigned_to"
    toml.write_text("[incidents]\nsync_assignee = true\n")
    assert load_settings(toml, env_file=None).incidents.sync_assignee is True
