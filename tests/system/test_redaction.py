"""Secrets never printed (SPEC B20; issue 6): with every secret set to a known string,
a full run with DEBUG logging, ``bpsync config show``, ``bpsync config check`` and failed
authentications never print it.

The emulators run in this test process on the real clock with the known credentials;
``bpsync`` runs as a subprocess (``python -m sync``), its stdout and stderr captured.
"""

from __future__ import annotations

import asyncio
import base64
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from sync.emulators import bigpanda as bp_emulator
from sync.emulators import servicenow as sn_emulator
from sync.emulators.control import serve_app

pytestmark = pytest.mark.slow

SN_USER = "bpsync"
SN_PASSWORD = "sn-pass-S3cr3t-7f1a"
OAUTH_CLIENT = "bpsync-client"
OAUTH_SECRET = "oauth-client-S3cr3t-9b2c"
BP_API_KEY = "BPUkey-S3cr3t-4d5e"
BP_ORG_TOKEN = "org-token-S3cr3t-6a7b"
DB_PASSWORD = "db-pass-S3cr3t-8c9d"
#: the wrong secrets of the failed authentications must not be printed either
WRONG = {
    "sn_password": "wrong-sn-S3cr3t-1111",
    "oauth_secret": "wrong-oauth-S3cr3t-2222",
    "bp_api_key": "BPUwrong-S3cr3t-3333",
}
SECRETS = [SN_PASSWORD, OAUTH_SECRET, BP_API_KEY, BP_ORG_TOKEN, DB_PASSWORD, *WRONG.values()]


def leaks(text: str) -> list[str]:
    """Every secret (or its Basic-auth encoding) that appears in ``text``."""
    found = [s for s in SECRETS if s in text]
    basic = base64.b64encode(f"{SN_USER}:{SN_PASSWORD}".encode()).decode()
    if basic in text:
        found.append("Basic " + basic)
    return found


@dataclass
class Apis:
    sn: str
    bp: str
    http: aiohttp.ClientSession


@pytest.fixture
async def apis() -> AsyncIterator[Apis]:
    sn_app = sn_emulator.create_app(
        users={SN_USER: SN_PASSWORD}, oauth_clients={OAUTH_CLIENT: OAUTH_SECRET}
    )
    bp_app = bp_emulator.create_app(
        api_key=BP_API_KEY, org_token=BP_ORG_TOKEN, rate_limit_per_s=None
    )
    async with (
        serve_app(sn_app) as sn,
        serve_app(bp_app) as bp,
        aiohttp.ClientSession() as http,
    ):
        yield Apis(sn, bp, http)


def env_for(apis: Apis, state_dir: Path, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BPSYNC_")}
    env.update(
        {
            "BPSYNC_SERVICENOW__URL": apis.sn,
            "BPSYNC_SERVICENOW__USERNAME": SN_USER,
            "BPSYNC_SERVICENOW__PASSWORD": SN_PASSWORD,
            "BPSYNC_SERVICENOW__CLIENT_ID": OAUTH_CLIENT,
            "BPSYNC_SERVICENOW__CLIENT_SECRET": OAUTH_SECRET,
            "BPSYNC_BIGPANDA__URL": apis.bp,
            "BPSYNC_BIGPANDA__API_KEY": BP_API_KEY,
            "BPSYNC_BIGPANDA__BEARER_TOKEN": BP_ORG_TOKEN,
            "BPSYNC_BIGPANDA__ENVIRONMENTS": bp_emulator.DEFAULT_ENVIRONMENT_ID,
            "BPSYNC_STATE_DIR": str(state_dir),
            "BPSYNC_POLL_INTERVAL": "0.2",
            "BPSYNC_HTTP_PORT": "0",
            "BPSYNC_LOG_LEVEL": "DEBUG",
            "BPSYNC_LOG_FORMAT": "text",
        }
    )
    env.update(overrides)
    return env


async def bpsync(env: dict[str, str], *args: str) -> tuple[int, str]:
    """Run ``python -m sync ARGS``; exit code and stdout + stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sync",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode("utf-8", errors="replace")


async def test_a_full_debug_run_prints_no_secret(apis: Apis, tmp_path: Path) -> None:
    async with apis.http.post(
        apis.bp + "/data/v2/alerts",
        json={"app_key": "redaction", "status": "critical", "host": "secret-host", "check": "x"},
        headers={"Authorization": f"Bearer {BP_ORG_TOKEN}"},
    ) as resp:
        assert resp.status < 300, await resp.text()
    env = env_for(apis, tmp_path)
    code, out = await bpsync(env, "db", "upgrade")
    assert code == 0, out
    code, out = await bpsync(env, "run", "--once")
    assert code == 0, out
    assert "DEBUG" in out, "the run did not log at DEBUG"
    assert "sn.create ok" in out, out[-3000:]  # a real run: the incident was created
    assert not leaks(out), leaks(out)
    # the JSON format too
    code, out = await bpsync({**env, "BPSYNC_LOG_FORMAT": "json"}, "run", "--once")
    assert code == 0, out
    assert not leaks(out), leaks(out)


async def test_config_show_and_check_print_no_secret(apis: Apis, tmp_path: Path) -> None:
    env = env_for(
        apis,
        tmp_path,
        BPSYNC_DATABASE_URL=f"postgresql+asyncpg://bpsync:{DB_PASSWORD}@127.0.0.1:9/bpsync",
    )
    code, out = await bpsync(env, "config", "show")
    assert code == 0, out
    assert OAUTH_CLIENT in out  # the real settings were shown
    assert not leaks(out), leaks(out)
    # check: the database is unreachable (port 9), the APIs are fine; no secret either way
    code, out = await bpsync(env, "config", "check")
    assert code == 1, out
    assert "database" in out.lower()
    assert not leaks(out), leaks(out)
    # the daemon failing on that database says so in one line, without the password
    code, out = await bpsync(env, "run", "--once")
    assert code != 0, out
    assert not leaks(out), leaks(out)


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param(
            {
                "BPSYNC_SERVICENOW__PASSWORD": WRONG["sn_password"],
                "BPSYNC_SERVICENOW__CLIENT_ID": "",
                "BPSYNC_SERVICENOW__CLIENT_SECRET": "",
            },
            id="servicenow-basic",
        ),
        pytest.param(
            {"BPSYNC_SERVICENOW__CLIENT_SECRET": WRONG["oauth_secret"]}, id="servicenow-oauth"
        ),
        pytest.param({"BPSYNC_BIGPANDA__API_KEY": WRONG["bp_api_key"]}, id="bigpanda-api-key"),
    ],
)
async def test_a_failed_authentication_prints_no_secret(
    apis: Apis, tmp_path: Path, overrides: dict[str, str]
) -> None:
    env = env_for(apis, tmp_path, **overrides)
    code, out = await bpsync(env, "db", "upgrade")
    assert code == 0, out
    code, out = await bpsync(env, "run", "--once")
    assert code != 0, out
    assert "refused" in out.lower() or "auth" in out.lower(), out[-2000:]
    assert not leaks(out), leaks(out)
    code, out = await bpsync(env, "config", "check")
    assert code == 1, out
    assert not leaks(out), leaks(out)
