"""``bpsync config show|check``."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from click.testing import CliRunner

from sync.cli.main import cli
from sync.emulators.control import serve_app
from sync.store import upgrade_database

SN_PASSWORD = "sn-pa55-s3cret"
BP_TOKEN = "bp-org-t0ken-s3cret"
BP_KEY = "BPU-s3cret-key"
DB_PASSWORD = "db-pa55w0rd"


def invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_show_masks_every_secret(tmp_path: Path) -> None:
    password_file = tmp_path / "sn_password"
    password_file.write_text(SN_PASSWORD + "\n")
    env = {
        "BPSYNC_SERVICENOW__URL": "https://sn.example.com",
        "BPSYNC_SERVICENOW__USERNAME": "bpsync",
        "BPSYNC_SERVICENOW__PASSWORD_FILE": str(password_file),
        "BPSYNC_SERVICENOW__CLIENT_SECRET": "oauth-s3cret",
        "BPSYNC_BIGPANDA__BEARER_TOKEN": BP_TOKEN,
        "BPSYNC_BIGPANDA__API_KEY": BP_KEY,
        "BPSYNC_DATABASE_URL": f"postgresql+asyncpg://bpsync:{DB_PASSWORD}@db/bpsync",
        "BPSYNC_POLL_INTERVAL": "30",
    }
    code, out, err = invoke("config", "show", env=env)
    assert code == 0, err
    for secret in (SN_PASSWORD, BP_TOKEN, BP_KEY, DB_PASSWORD, "oauth-s3cret"):
        assert secret not in out
    data = json.loads(out)
    assert data["servicenow"]["url"] == "https://sn.example.com"
    assert data["servicenow"]["username"] == "bpsync"
    assert data["servicenow"]["password"] == "**********"
    assert data["bigpanda"]["bearer_token"] == "**********"
    assert data["bigpanda"]["api_key"] == "**********"
    assert data["database_url"] == "postgresql+asyncpg://bpsync:****@db/bpsync"
    assert data["poll_interval"] == 30.0


def test_show_without_secrets_shows_null(tmp_path: Path) -> None:
    code, out, _ = invoke("config", "show", env={"BPSYNC_STATE_DIR": str(tmp_path)})
    assert code == 0
    data = json.loads(out)
    assert data["servicenow"]["password"] is None
    assert data["database_url"].endswith("/bpsync.db")


def test_check_reports_each_bad_setting_on_its_own_line() -> None:
    env = {"BPSYNC_POLL_INTERVAL": "soon", "BPSYNC_RETRIEVAL_COUNT": "1000"}
    code, out, err = invoke("config", "check", env=env)
    assert code == 1
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 2, err
    assert all(line.startswith("FAIL settings: invalid setting ") for line in lines)
    assert any("poll_interval" in line for line in lines)
    assert any("retrieval_count" in line for line in lines)


# --------------------------------------------------------------------------- check, live


@dataclass
class Apis:
    sn: str
    bp: str


@pytest.fixture
async def apis() -> AsyncIterator[Apis]:
    from sync.emulators import bigpanda, servicenow

    async with (
        serve_app(servicenow.create_app()) as sn,
        serve_app(bigpanda.create_app()) as bp,
    ):
        yield Apis(sn, bp)


async def run_cli(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    """``python -m sync`` in a subprocess while this loop serves the emulators."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("BPSYNC_")}
    environ.update(env)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sync",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environ,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def api_env(apis: Apis, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        "BPSYNC_SERVICENOW__URL": apis.sn,
        "BPSYNC_SERVICENOW__USERNAME": "bpsync",
        "BPSYNC_SERVICENOW__PASSWORD": "bpsync",
        "BPSYNC_BIGPANDA__URL": apis.bp,
        "BPSYNC_BIGPANDA__API_KEY": "BPUbpsync-emulator",
        "BPSYNC_BIGPANDA__BEARER_TOKEN": "bpsync-org-token",
        "BPSYNC_STATE_DIR": str(tmp_path / "state"),
    }
    env.update(extra)
    return env


async def test_check_all_good(apis: Apis, tmp_path: Path) -> None:
    db = tmp_path / "state" / "bpsync.db"
    await upgrade_database(f"sqlite+aiosqlite:///{db.as_posix()}")
    code, out, err = await run_cli("config", "check", env=api_env(apis, tmp_path))
    assert code == 0, err
    assert err == ""
    lines = out.strip().splitlines()
    assert len(lines) == 4
    assert all(line.startswith("ok   ") for line in lines)
    assert lines[1].startswith(f"ok   servicenow ({apis.sn}): reachable, credentials accepted")
    assert lines[2].startswith(f"ok   bigpanda ({apis.bp}): reachable, credentials accepted")
    assert "at the newest migration" in lines[3]


async def test_check_one_line_per_problem(apis: Apis, tmp_path: Path) -> None:
    env = api_env(
        apis,
        tmp_path,
        BPSYNC_SERVICENOW__PASSWORD="wrong-pa55",
        BPSYNC_BIGPANDA__URL="http://127.0.0.1:1",
    )
    code, out, err = await run_cli("config", "check", env=env)
    assert code == 1
    assert "Traceback" not in err
    assert "wrong-pa55" not in out + err
    problems = err.strip().splitlines()
    assert len(problems) == 3, err
    assert problems[0].startswith(f"FAIL servicenow ({apis.sn}): ")
    assert "401" in problems[0]
    assert problems[1].startswith("FAIL bigpanda (http://127.0.0.1:1): ")
    assert problems[2].startswith("FAIL database (")
    assert "bpsync db upgrade" in problems[2]  # the embedded file is not there yet
    assert out.strip().splitlines() == ["ok   settings: valid"]


async def test_check_names_tags_to_define_a_wrong_type_and_narrowed_rows(
    apis: Apis, tmp_path: Path
) -> None:
    db = tmp_path / "state" / "bpsync.db"
    await upgrade_database(f"sqlite+aiosqlite:///{db.as_posix()}")
    config = tmp_path / "bpsync.toml"
    config.write_text(
        "[[tag_mapping]]\n"
        'bigpanda_tag = "owner"\nservicenow_field = "number"\ndirection = "both"\n'
        "[[tag_mapping]]\n"
        'bigpanda_tag = "team"\nservicenow_field = "category"\ndirection = "sn_to_bp"\n',
        encoding="utf-8",
    )
    env = api_env(apis, tmp_path)
    code, out, err = await run_cli("--config", str(config), "config", "check", env=env)
    assert code == 0, err
    assert "warn mapping: narrowed: tag_mapping[0] (owner <-> number)" in err
    assert "tags bpsync writes: defined -; to define at start servicenow_link, owner, team" in out

    # a tag of another type: FAIL, naming the tag and its type
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{apis.bp}/resources/v2.0/incidents/tags/definitions",
            json={"name": "team", "type": "MultiValue"},
            headers={"Authorization": "Bearer BPUbpsync-emulator"},
        ) as resp,
    ):
        assert resp.status == 201, await resp.text()
    code, out, err = await run_cli("--config", str(config), "config", "check", env=env)
    assert code == 1
    assert "the BigPanda tag team is of type MultiValue" in err
