"""``bpsync db``, ``links`` and ``dlq`` against a real SQLite file, through the error boundary."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from migrations import HEAD
from sync.cli.main import main
from sync.constants import Side
from sync.model import LinkState
from sync.store import open_store, upgrade_database
from sync.store.base import NewAuditEntry, OutboxState

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
BP = "0123456789abcdef01234567"
SYS_OLD = "a" * 32
SYS_NEW = "b" * 32


@pytest.fixture
def db_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite+aiosqlite:///{(tmp_path / 'var' / 'bpsync.db').as_posix()}"
    monkeypatch.setenv("BPSYNC_DATABASE_URL", url)
    return url


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


async def _populate(url: str) -> dict[str, int]:
    await upgrade_database(url)
    store = await open_store(url)
    try:
        old = await store.create_pending_link(BP, T0)
        await store.confirm_link(old.id, SYS_OLD, "INC0010001", T0)
        await store.set_link_state(old.id, LinkState.RESOLVED, T0, reopen_deadline=T0)
        await store.set_link_state(old.id, LinkState.SUPERSEDED, T0 + timedelta(hours=1))
        new = await store.create_pending_link(BP, T0 + timedelta(hours=1), previous_link_id=old.id)
        await store.confirm_link(new.id, SYS_NEW, "INC0010002", T0 + timedelta(hours=1))
        await store.record_field_states(new.id, Side.SERVICENOW, {"urgency": "2"}, T0)
        conflict = NewAuditEntry(
            "conflict", "bigpanda wins", link_id=new.id, field="urgency", bp_value="1", sn_value="2"
        )
        await store.record_audit(conflict, T0)
        dead = await store.enqueue("sn.update", f"servicenow:{SYS_NEW}", {}, "k1", T0)
        await store.dead_letter(dead.id, "permanent: HTTP 400: Invalid field 'u_x'", T0)
        other = await store.enqueue("bp.tags", f"bigpanda:{BP}", {}, "k2", T0)
        await store.dead_letter(other.id, "HTTP 404", T0)
        return {"old": old.id, "new": new.id, "dead": dead.id, "other": other.id}
    finally:
        await store.close()


async def _outbox_states(url: str) -> dict[int, OutboxState]:
    store = await open_store(url)
    try:
        return {x.id: x.state for x in await store.list_outbox()}
    finally:
        await store.close()


def test_db_upgrade_and_current(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["db", "current"], capsys)
    assert code == 0
    assert f"revision empty (newest {HEAD}): needs `bpsync db upgrade`" in out
    code, out, _ = run(["db", "upgrade"], capsys)
    assert code == 0
    assert out.strip().endswith(f"upgraded from empty to {HEAD}")
    code, out, _ = run(["db", "upgrade"], capsys)
    assert f"already at revision {HEAD}" in out
    code, out, _ = run(["db", "current"], capsys)
    assert f"revision {HEAD} (newest {HEAD}): up to date" in out


def test_store_commands_on_an_old_schema_say_what_to_run(
    db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv in (["links", "list"], ["dlq", "list"]):
        code, out, err = run(argv, capsys)
        assert code == 1
        assert err.strip() == (
            f"bpsync: error: database schema is at empty, this bpsync needs {HEAD}: "
            "run `bpsync db upgrade`"
        )
        assert out == ""


def test_links_list_and_show(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    ids = asyncio.run(_populate(db_url))
    code, out, _ = run(["links", "list"], capsys)
    assert code == 0
    assert "links (2 of 2)" in out
    assert "INC0010002" in out and SYS_NEW in out and "superseded" in out
    code, out, _ = run(["links", "list", "--state", "linked"], capsys)
    assert "links (1 of 1)" in out
    assert SYS_OLD not in out
    for key in (str(ids["new"]), BP, SYS_NEW, SYS_OLD):
        code, out, err = run(["links", "show", key], capsys)
        assert code == 0, err
        assert f"BigPanda incident {BP}: history" in out
        assert "INC0010001" in out and "INC0010002" in out
        assert "bigpanda wins" in out
    code, out, _ = run(["links", "show", str(ids["new"])], capsys)
    assert "urgency" in out
    code, _, err = run(["links", "show", "nope"], capsys)
    assert code == 1
    assert "no link found for 'nope'" in err


def test_dlq_list_retry_and_drop(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    ids = asyncio.run(_populate(db_url))
    code, out, _ = run(["dlq", "list"], capsys)
    assert code == 0
    # what needs a person: the refused write; the other is still retried by bpsync
    assert "dead letters (1 of 1); 1 more retried by bpsync (--all)" in out
    assert "Invalid field 'u_x'" in out and "a person" in out
    assert "HTTP 404" not in out
    code, out, _ = run(["dlq", "list", "--all"], capsys)
    assert "dead letters (2 of 2)" in out
    assert "HTTP 404" in out and "bpsync retries" in out
    code, _, err = run(["dlq", "retry"], capsys)
    assert code == 2
    assert "give either ITEM_ID or --all" in err
    code, out, _ = run(["dlq", "retry", str(ids["dead"])], capsys)
    assert code == 0
    assert "1 write back in the outbox" in out
    assert asyncio.run(_outbox_states(db_url))[ids["dead"]] == OutboxState.PENDING
    code, _, err = run(["dlq", "retry", str(ids["dead"])], capsys)
    assert code == 1
    assert f"no dead write with id {ids['dead']}" in err
    code, out, _ = run(["dlq", "drop", str(ids["other"]), "--yes"], capsys)
    assert code == 0
    assert ids["other"] not in asyncio.run(_outbox_states(db_url))
    code, out, _ = run(["dlq", "retry", "--all"], capsys)
    assert "0 writes back in the outbox" in out


def test_dlq_drop_asks_first(
    db_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = asyncio.run(_populate(db_url))
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("n\n"))
    code, _, err = run(["dlq", "drop", str(ids["dead"])], capsys)
    assert code == 1
    assert "Aborted." in err
    assert asyncio.run(_outbox_states(db_url))[ids["dead"]] == OutboxState.DEAD


def test_unreachable_database_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BPSYNC_DATABASE_URL", "postgresql+asyncpg://u:hunter2@127.0.0.1:1/db")
    code, _out, err = run(["links", "list"], capsys)
    assert code == 1
    assert err.startswith("bpsync: error: database postgresql+asyncpg://u:****@127.0.0.1:1/db:")
    assert "hunter2" not in err
    assert err.count("\n") == 1


def test_links_show_names_frozen_fields_and_release_resumes_them(
    db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = asyncio.run(_populate(db_url))

    async def freeze() -> None:
        store = await open_store(db_url)
        try:
            frozen = {"$frozen:impact": "true", "$flips:impact": "1 2 3"}
            await store.record_field_states(ids["new"], Side.SERVICENOW, frozen, T0)
        finally:
            await store.close()

    asyncio.run(freeze())
    code, out, _ = run(["links", "show", str(ids["new"])], capsys)
    assert code == 0
    assert f"`bpsync links release {ids['new']}` resumes): impact" in out
    code, out, _ = run(["links", "release", str(ids["new"])], capsys)
    assert (code, out.strip()) == (0, f"released on link {ids['new']}: impact")
    code, out, _ = run(["links", "release", str(ids["new"])], capsys)
    assert out.strip() == f"nothing frozen on link {ids['new']}"
    code, _, err = run(["links", "release", "999999"], capsys)
    assert code == 1 and "no link 999999" in err
