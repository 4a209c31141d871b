"""``[[pairs]]``: expansion over the top-level defaults, each pair's own state, the
refusals (process settings in a pair, bad or repeated names, two pairs on one incident
stream), the secrets of pairs kept out of logs and ``config show``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from sync.cli.main import cli
from sync.errors import ConfigError
from sync.pairconfig import DEFAULT_PAIR, expand_pairs, overlaps, select_pair
from sync.redaction import redacted_dump, secret_values
from sync.settings import Settings, load_settings

BASE: dict[str, Any] = {
    "servicenow.url": "http://sn.example",
    "servicenow.username": "bpsync",
    "servicenow.password": "top-pw",
    "servicenow.timeout": 12,
    "bigpanda.api_key": "key-1",
    "bigpanda.bearer_token": "org-1",
    "bigpanda.environments": ["env-a"],
    "incidents.assignment_group": "Ops",
    "tag_mapping": [{"bigpanda_tag": "service_area", "servicenow_field": "category"}],
}


def load(tmp: Path, pairs: list[dict[str, Any]], **extra: Any) -> Settings:
    return load_settings(
        None, {**BASE, "state_dir": str(tmp), "pairs": pairs, **extra}, env_file=None
    )


def test_without_pairs_there_is_one_pair_named_default(tmp_path: Path) -> None:
    settings = load(tmp_path, [])
    [pair] = expand_pairs(settings)
    assert pair.name == DEFAULT_PAIR
    assert pair.settings is settings
    assert select_pair(settings, None) is not None


def test_a_pair_overrides_the_defaults_field_by_field(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        [
            {"name": "default"},
            {
                "name": "staging",
                "poll_interval": "30s",
                "servicenow": {"url": "http://sn2.example", "password": "pw-2"},
                "bigpanda": {"environments": ["env-b"]},
                "tag_mapping": [{"bigpanda_tag": "area", "servicenow_field": "subcategory"}],
            },
        ],
    )
    default, staging = expand_pairs(settings)
    assert default.settings.servicenow.url == "http://sn.example"
    assert default.settings.incidents.assignment_group == "Ops"
    # overridden fields change, the others come from the top level
    assert staging.settings.servicenow.url == "http://sn2.example"
    assert staging.settings.servicenow.username == "bpsync"
    assert staging.settings.servicenow.timeout == 12
    assert staging.settings.servicenow.password is not None
    assert staging.settings.servicenow.password.get_secret_value() == "pw-2"
    assert staging.settings.bigpanda.environments == ["env-b"]
    assert staging.settings.bigpanda.api_key is not None
    assert staging.settings.incidents.assignment_group == "Ops"
    assert staging.settings.poll_interval == 30.0
    # a pair's mapping replaces the top-level rows as a whole
    assert [r.bigpanda_tag for r in staging.settings.tag_mapping] == ["area"]
    assert [r.bigpanda_tag for r in default.settings.tag_mapping] == ["service_area"]


def test_each_pair_keeps_its_own_state(tmp_path: Path) -> None:
    pairs = [{"name": "default"}, {"name": "eu-1", "bigpanda": {"environments": ["x"]}}]
    default, eu = expand_pairs(load(tmp_path, pairs))
    assert default.settings.effective_database_url.endswith(f"{tmp_path.as_posix()}/bpsync.db")
    assert eu.settings.effective_database_url.endswith("/pairs/eu-1/bpsync.db")
    sqlite = load(tmp_path, pairs, database_url="sqlite+aiosqlite:////data/sync.db")
    urls = [p.settings.effective_database_url for p in expand_pairs(sqlite)]
    assert urls == ["sqlite+aiosqlite:////data/sync.db", "sqlite+aiosqlite:////data/sync-eu-1.db"]
    pg = load(tmp_path, pairs, database_url="postgresql+asyncpg://u:pw@db/bpsync")
    urls = [p.settings.effective_database_url for p in expand_pairs(pg)]
    # several pairs: each pair's pool is small (every replica opens every pair's store)
    assert urls == [
        "postgresql+asyncpg://u:pw@db/bpsync?max_overflow=4&pool_size=1",
        "postgresql+asyncpg://u:pw@db/bpsync?max_overflow=4&pool_size=1&search_path=bpsync_eu_1",
    ]
    sized = load(tmp_path, pairs, database_url="postgresql+asyncpg://u@db/x?pool_size=3")
    assert expand_pairs(sized)[0].settings.effective_database_url.endswith("x?pool_size=3")
    scoped = load(tmp_path, pairs, database_url="postgresql+asyncpg://u@db/x?search_path=acme")
    assert expand_pairs(scoped)[1].settings.effective_database_url.endswith("search_path=acme_eu_1")


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        ([{"name": "a", "http_port": 9}], r"pairs\.a\.http_port: a process setting"),
        ([{"name": "a", "database_url": "sqlite://"}], r"pairs\.a\.database_url"),
        ([{"name": "Prod!"}], r"pairs\[0\]\.name: a pair needs a name"),
        ([{"servicenow": {}}], r"pairs\[0\]\.name"),
        ([{"name": "a"}, {"name": "a"}], r"pair 'a' is named twice"),
        ([{"name": "a", "servicenow": {"timeout": "soon"}}], r"pairs\.a\.servicenow\.timeout"),
        ([{"name": "a", "nonsense": 1}], r"pairs\.a\.nonsense: unknown setting"),
    ],
)
def test_a_wrong_pair_table_is_one_line_naming_it(
    tmp_path: Path, pairs: list[dict[str, Any]], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        expand_pairs(load(tmp_path, pairs))


def test_two_pairs_on_one_incident_stream_overlap(tmp_path: Path) -> None:
    same = load(tmp_path, [{"name": "default"}, {"name": "b"}])
    [problem] = overlaps(expand_pairs(same))
    assert "'default' and 'b'" in problem
    assert "env-a" in problem
    apart = load(
        tmp_path, [{"name": "default"}, {"name": "b", "bigpanda": {"environments": ["z"]}}]
    )
    assert overlaps(expand_pairs(apart)) == []
    other_org = load(tmp_path, [{"name": "default"}, {"name": "b", "bigpanda": {"api_key": "k2"}}])
    assert overlaps(expand_pairs(other_org)) == []
    every_env = load(
        tmp_path, [{"name": "default"}, {"name": "b", "bigpanda": {"environments": []}}]
    )
    assert "every environment" in overlaps(expand_pairs(every_env))[0]


def test_select_pair_names_the_pairs_there_are(tmp_path: Path) -> None:
    settings = load(
        tmp_path, [{"name": "default"}, {"name": "b", "bigpanda": {"environments": ["z"]}}]
    )
    assert select_pair(settings, "b").name == "b"
    with pytest.raises(ConfigError, match=r"several pairs \(default, b\): choose one with --pair"):
        select_pair(settings, None)
    with pytest.raises(ConfigError, match=r"no pair named 'c' \(pairs: default, b\)"):
        select_pair(settings, "c")


def test_pairs_secrets_reach_neither_logs_nor_config_show(tmp_path: Path) -> None:
    secret_file = tmp_path / "pw"
    secret_file.write_text("pw-from-file\n")
    pairs = [
        {"name": "default"},
        {"name": "b", "servicenow": {"password": "pw-b"}, "bigpanda": {"environments": ["z"]}},
        {
            "name": "c",
            "servicenow": {"password_file": str(secret_file)},
            "bigpanda": {"environments": ["y"]},
        },
    ]
    settings = load(tmp_path, pairs)
    found = secret_values(settings)
    assert {"top-pw", "pw-b", "pw-from-file", "key-1", "org-1"} <= set(found)
    shown = str(redacted_dump(settings))
    assert "pw-b" not in shown
    assert expand_pairs(settings)[2].settings.servicenow.password is not None


def test_cli_commands_take_pair(tmp_path: Path) -> None:
    config = tmp_path / "bpsync.toml"
    config.write_text(
        f'state_dir = "{tmp_path.as_posix()}"\n'
        '[servicenow]\nurl = "http://127.0.0.1:9"\nusername = "u"\npassword = "p"\n'
        '[bigpanda]\nurl = "http://127.0.0.1:9"\napi_key = "k"\nbearer_token = "t"\n'
        '[[pairs]]\nname = "default"\nbigpanda = { environments = ["a"] }\n'
        '[[pairs]]\nname = "b"\nbigpanda = { environments = ["b"] }\n'
    )
    runner = CliRunner()
    upgraded = runner.invoke(cli, ["--config", str(config), "db", "upgrade"])
    assert upgraded.exit_code == 0, upgraded.output
    assert "default: " in upgraded.output and "b: " in upgraded.output
    assert (tmp_path / "pairs" / "b" / "bpsync.db").is_file()
    ambiguous = runner.invoke(cli, ["--config", str(config), "links", "list"])
    assert isinstance(ambiguous.exception, ConfigError)  # main() prints it as one line
    assert "choose one with --pair" in str(ambiguous.exception)
    for args in (["links", "list"], ["dlq", "list"]):
        result = runner.invoke(cli, ["--config", str(config), *args, "--pair", "b"])
        assert result.exit_code == 0, result.output
    unknown = runner.invoke(cli, ["--config", str(config), "dlq", "list", "--pair", "zz"])
    assert "no pair named 'zz'" in str(unknown.exception)
