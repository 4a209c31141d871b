"""``bpsync backfill --with-journal`` end to end: the history of comments reaches the
tickets once, and only with the flag (``sync.journal``)."""

from __future__ import annotations

from sync.constants import MIRROR_MARKER
from tests.integration.test_backfill_cli import Emulators, emulators, finish, load_incidents, start

__all__ = ["emulators"]  # the fixture, imported for pytest


def notes(emulators: Emulators, bp_id: str) -> list[str]:
    sn = emulators.sn_state
    sys_ids = {
        r["sys_id"] for r in sn.tables["incident"].values() if r.get("correlation_id") == bp_id
    }
    rows = sn.tables["sys_journal_field"].values()
    return [r["value"] for r in rows if r["element_id"] in sys_ids and r["element"] == "work_notes"]


async def test_history_only_with_journal_and_each_entry_once(emulators: Emulators) -> None:
    ids = load_incidents(emulators, 4)
    for bp_id in ids:
        emulators.bp_state.comment(bp_id, f"said before the ticket on {bp_id}")
    code, out, err = await finish(await start(emulators, "--since", "3h"), within_s=120)
    assert code == 0, (out, err)
    for bp_id in ids:  # without the flag: tickets, no history
        assert not [n for n in notes(emulators, bp_id) if "said before" in n]
    more = load_incidents(emulators, 3)
    for bp_id in more:
        emulators.bp_state.comment(bp_id, f"said before the ticket on {bp_id}")
    for _ in range(2):  # run twice: the second carries nothing again
        proc = await start(emulators, "--since", "3h", "--with-journal", "--restart")
        code, out, err = await finish(proc, within_s=120)
        assert code == 0, (out, err)
    for bp_id in more:
        carried = [n for n in notes(emulators, bp_id) if f"said before the ticket on {bp_id}" in n]
        assert len(carried) == 1
        assert carried[0].startswith(f"{MIRROR_MARKER} BigPanda comment by ")
    for bp_id in ids:  # their links got a history cutoff at the first run
        assert not [n for n in notes(emulators, bp_id) if "said before" in n]
