"""Journals under SIGKILL (issue 14 item 1): ``bpsync run`` as a subprocess, killed at
random points while people comment in BigPanda and write work notes and comments in
ServiceNow, restarted each time. At the end every entry is on the other side exactly
once (0 lost, 0 duplicated) and none came back (0 echoed), counted in the emulators.

Killed between recording an entry and sending it, the next process sends it; killed
after the send and before the write was marked done, it finds the entry in the target's
journal and does not send it again (``sync.executor.journal_writes``). As the crash test
(``test_crash.py``): the emulators on the real clock in this process; the figures are
printed (``-s``).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from pathlib import Path

import pytest

from sync.constants import MIRROR_MARKER

from .conftest import World
from .helpers import ENV, V2, Emu
from .test_crash import KILL_AFTER_S, Daemon, daemon_env

pytestmark = pytest.mark.slow

KILLS = 12
INCIDENTS = 6
SETTLE_TIMEOUT_S = 40.0
LINK_TAG = "servicenow_link"


class Conversation:
    """People talking on linked incidents, both sides; what reached the other side."""

    def __init__(self, emu: Emu, rng: random.Random) -> None:
        self.emu = emu
        self.rng = rng
        self.bp_ids: list[str] = []
        #: BigPanda id -> (sys_id, when people may write: a second after the link tag)
        self.ready: dict[str, tuple[str, float]] = {}
        #: (side written on, BigPanda id, text)
        self.entries: list[tuple[str, str, str]] = []

    async def open_incidents(self) -> None:
        for n in range(INCIDENTS):
            self.bp_ids.append(await self.emu.new_incident(f"journal-crash-{n}", check="cpu"))

    async def _linked(self) -> list[str]:
        now = time.monotonic()
        for bp_id in self.bp_ids:
            if bp_id in self.ready:
                continue
            if (await self.emu.tags(bp_id)).get(LINK_TAG, "error") == "error":
                continue
            sys_id = (await self.emu.sn_one_for(bp_id))["sys_id"]
            self.ready[bp_id] = (sys_id, now + 1.2)  # BigPanda stamps whole seconds
        return [b for b, (_, at) in self.ready.items() if at <= now]

    async def step(self) -> None:
        linked = await self._linked()
        if not linked:
            return
        bp_id = self.rng.choice(linked)
        text = f"jr-{len(self.entries)}"
        if self.rng.random() < 0.5:
            await self.emu._bp(
                "POST",
                f"{V2}/environments/{ENV}/incidents/{bp_id}/comments",
                json={"comment": text},
                expect=204,
            )
            self.entries.append(("bigpanda", bp_id, text))
        else:
            element = self.rng.choice(["work_notes", "comments"])
            await self.emu.sn_patch(self.ready[bp_id][0], {element: text})
            self.entries.append(("servicenow", bp_id, text))

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.step()
            await asyncio.sleep(self.rng.uniform(0.05, 0.2))

    async def copies(self) -> tuple[Counter[tuple[str, str]], int]:
        """(side, text) -> bpsync's copies there, and the copies of copies (echoes)."""
        found: Counter[tuple[str, str]] = Counter()
        echoes = 0
        for bp_id in self.bp_ids:
            items = await self.emu.activities(bp_id, ["incident_commented"])
            texts = [("bigpanda", str(a["params"]["comment"])) for a in items]
            if bp_id in self.ready:
                rows = await self.emu.sn_query(
                    f"element_id={self.ready[bp_id][0]}^elementINwork_notes,comments",
                    table="sys_journal_field",
                )
                texts += [("servicenow", row["value"]) for row in rows]
            for side, text in texts:
                if text.startswith(MIRROR_MARKER):
                    found[(side, text.rsplit("\n", 1)[-1])] += 1
                    echoes += text.count(MIRROR_MARKER) - 1
        return found, echoes

    async def tally(self) -> tuple[list[str], list[str], list[str]]:
        """(lost, duplicated, echoed) entries."""
        found, echoes = await self.copies()
        lost, duplicated, echoed = [], [], [f"{echoes} copies of copies"] if echoes else []
        for side, bp_id, text in self.entries:
            other = "servicenow" if side == "bigpanda" else "bigpanda"
            n = found[(other, text)]
            if n == 0:
                lost.append(f"{text} ({side} -> {other}, {bp_id})")
            elif n > 1:
                duplicated.append(f"{text} x{n}")
            if found[(side, text)]:
                echoed.append(f"{text} back on {side}")
        return lost, duplicated, echoed


async def test_sigkill_while_journals_are_carried_loses_and_duplicates_nothing(
    live_world: World, tmp_path: Path
) -> None:
    emu = Emu(live_world)
    seed = int(os.environ.get("BPSYNC_TEST_CRASH_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    talk = Conversation(emu, rng)
    await talk.open_incidents()
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    env = daemon_env(live_world, state_dir)
    env["BPSYNC_TAG_MAPPING"] = "[]"
    env["BPSYNC_JOURNAL__FROM_SERVICENOW"] = "work_notes,comments"
    daemon = Daemon(env, tmp_path)
    started = time.monotonic()
    stop = asyncio.Event()
    people = asyncio.create_task(talk.run(stop))
    survived = 0
    died_alone: list[str] = []
    try:
        for _ in range(KILLS):
            await daemon.start()
            await asyncio.sleep(rng.uniform(*KILL_AFTER_S) + 0.4)
            code = await daemon.kill()
            if code is not None:
                died_alone.append(f"exit {code}:\n{daemon.tail()}")
                continue
            survived += 1
        stop.set()
        await people
        await daemon.start()  # the last start: let it settle
        await daemon.wait_running()
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        lost, duplicated, echoed = await talk.tally()
        while lost and time.monotonic() < deadline:
            assert daemon.alive(), f"the daemon died:\n{daemon.tail()}"
            await asyncio.sleep(0.5)
            lost, duplicated, echoed = await talk.tally()
        await asyncio.sleep(1.0)  # a few more cycles: nothing more may arrive
        lost, duplicated, echoed = await talk.tally()
        assert await daemon.stop() == 0, daemon.tail()
    finally:
        stop.set()
        if not people.done():
            people.cancel()
        if daemon.alive():
            await daemon.kill()
    sides = Counter(side for side, _, _ in talk.entries)
    print(
        f"\njournal crash test (seed {seed}): {survived} SIGKILLs survived of {KILLS}, "
        f"{sides['bigpanda']} BigPanda comments and {sides['servicenow']} ServiceNow "
        f"entries; lost {len(lost)}, duplicated {len(duplicated)}, echoed {len(echoed)}, "
        f"{time.monotonic() - started:.1f}s"
    )
    assert not died_alone, "the daemon exited by itself:\n" + "\n".join(died_alone)
    assert survived == KILLS
    assert len(talk.entries) >= 10, "the workload wrote too little to prove anything"
    assert not lost, lost[:20]
    assert not duplicated, duplicated[:20]
    assert not echoed, echoed[:20]
