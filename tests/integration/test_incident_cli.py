"""``bpsync incident ...`` end to end: the real CLI in a subprocess against the emulator.

The seed's two examples (docs seeds/000): create with a short description, update the
priority; then read, delete --yes, and read again failing with a one-line "not found".
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sync.emulators.control import serve_app
from sync.emulators.servicenow import create_app


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> dict[str, str]:
        data = json.loads(self.out)
        assert isinstance(data, dict)
        return data


@pytest.fixture
async def sn_url() -> AsyncIterator[str]:
    async with serve_app(create_app()) as url:
        yield url


async def bpsync(url: str | None, *args: str, stdin: bytes = b"", **env: str) -> Result:
    """Run ``python -m sync`` (the ``bpsync`` entry point) while this loop serves the emulator."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("BPSYNC_")}
    if url is not None:
        environ.update(
            BPSYNC_SERVICENOW__URL=url,
            BPSYNC_SERVICENOW__USERNAME="bpsync",
            BPSYNC_SERVICENOW__PASSWORD="bpsync",
        )
    environ.update(env)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sync",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environ,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), timeout=30)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


def one_line_error(result: Result) -> str:
    assert result.code == 1, result
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert "Traceback" not in result.err
    return lines[0]


async def test_seed_examples_create_update_read_delete(sn_url: str) -> None:
    created = await bpsync(
        sn_url,
        "incident",
        "create",
        "--payload",
        '{"short_description": "Create ServiceNow Incident (from Camunda)"}',
    )
    assert created.code == 0, created.err
    record = created.json()
    sys_id = record["sys_id"]
    assert re.fullmatch(r"[0-9a-f]{32}", sys_id)
    assert record["number"] == "INC0010001"
    assert record["short_description"] == "Create ServiceNow Incident (from Camunda)"

    updated = await bpsync(sn_url, "incident", "update", sys_id, "--payload", '{"priority": "2"}')
    assert updated.code == 0, updated.err
    assert updated.json()["sys_id"] == sys_id
    assert updated.json()["sys_mod_count"] == "1"

    read = await bpsync(sn_url, "incident", "read", sys_id)
    assert read.code == 0, read.err
    assert read.json()["number"] == "INC0010001"
    assert read.json()["sys_mod_count"] == "1"

    deleted = await bpsync(sn_url, "incident", "delete", sys_id, "--yes")
    assert deleted.code == 0, deleted.err
    assert deleted.json() == {
        "deleted": True,
        "sys_id": sys_id,
        "number": "INC0010001",
        "table": "incident",
    }

    gone = await bpsync(sn_url, "incident", "read", sys_id)
    assert one_line_error(gone) == f"bpsync: error: incident {sys_id} not found"
    assert gone.out == ""


async def test_payload_from_file_and_delete_confirmation(sn_url: str, tmp_path: Path) -> None:
    payload = tmp_path / "incident.json"
    payload.write_text('{"short_description": "from a file", "impact": 1, "urgency": 1}')
    created = await bpsync(sn_url, "incident", "create", "--payload", f"@{payload}")
    assert created.code == 0, created.err
    sys_id = created.json()["sys_id"]
    assert created.json()["impact"] == "1"

    declined = await bpsync(sn_url, "incident", "delete", sys_id, stdin=b"n\n")
    assert declined.code == 1
    assert "Delete incident INC" in declined.err
    assert (await bpsync(sn_url, "incident", "read", sys_id)).code == 0

    accepted = await bpsync(sn_url, "incident", "delete", sys_id, stdin=b"y\n")
    assert accepted.code == 0, accepted.err
    assert accepted.json()["deleted"] is True


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["create", "--payload", '{"short_description": '], "payload is not valid JSON"),
        (["create", "--payload", '["a"]'], "payload must be a JSON object of field values"),
        (["create", "--payload", "@/nonexistent/x.json"], "cannot read payload file"),
        (["create", "--payload", '{"Bad Name": "x"}'], "is not a valid ServiceNow field name"),
        (["read", "not-a-sys-id"], "invalid sys_id 'not-a-sys-id'"),
        (["update", "0" * 32, "--payload", "{}"], "payload is empty"),
        (["delete", "0" * 32, "--yes"], f"incident {'0' * 32} not found"),
        (["update", "0" * 32, "--payload", '{"a": "b"}'], f"incident {'0' * 32} not found"),
    ],
)
async def test_user_errors_are_one_line(sn_url: str, args: list[str], expected: str) -> None:
    result = await bpsync(sn_url, "incident", *args)
    assert expected in one_line_error(result)


async def test_servicenow_message_and_detail_are_shown(sn_url: str) -> None:
    created = await bpsync(sn_url, "incident", "create", "--payload", '{"short_description": "x"}')
    sys_id = created.json()["sys_id"]
    resolve = await bpsync(sn_url, "incident", "update", sys_id, "--payload", '{"state": "6"}')
    line = one_line_error(resolve)
    assert "HTTP 403: Operation Failed" in line
    assert "Data Policy Exception" in line


async def test_authentication_refused_and_unreachable(sn_url: str) -> None:
    refused = await bpsync(sn_url, "incident", "read", "0" * 32, "--password", "wrong")
    line = one_line_error(refused)
    assert "HTTP 401: authentication refused" in line
    assert "wrong" not in line

    unreachable = await bpsync(
        None,
        "incident",
        "read",
        "0" * 32,
        "--url",
        "http://127.0.0.1:9",
        "--username",
        "u",
        "--password",
        "p",
    )
    assert "instance unreachable: cannot connect to 127.0.0.1:9" in one_line_error(unreachable)

    missing = await bpsync(None, "incident", "read", "0" * 32)
    assert "missing setting servicenow.url" in one_line_error(missing)
