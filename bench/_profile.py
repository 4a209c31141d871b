"""Run ``python -m MODULE ARGS`` under cProfile, the SQLite store thread included.

Usage (what ``bench/backfill.py --profile OUT`` runs)::

    python bench/_profile.py OUT -m sync backfill --since 2d

cProfile sees only the thread it was enabled in; a SQLite store runs its calls on the
event loop, or in a thread of its own while another process holds the lock
(:mod:`sync.store.threads`). Written at exit:

- ``OUT``: the event loop's thread, its store calls included (``python -m pstats OUT``);
- ``OUT.store``: the store calls run in the store's thread;
- ``OUT.calls.json``: per store method, its calls and the thread CPU seconds they took.

``SIGUSR1`` starts all three afresh: what ran before it is dropped (``bench/scale.py
--pairs --profile`` sends it when the phase it profiles starts, the change phase or the
idle window, so start-up stays out of the figures).
"""

from __future__ import annotations

import atexit
import cProfile
import json
import runpy
import signal
import sys
import time
from collections import Counter
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sync.store import threads


def main() -> None:
    if len(sys.argv) < 4 or sys.argv[2] != "-m":
        raise SystemExit(__doc__)
    out = Path(sys.argv[1])
    module = sys.argv[3]
    profs = {"main": cProfile.Profile(), "store": cProfile.Profile()}
    calls: Counter[str] = Counter()
    cpu_s: Counter[str] = Counter()

    def restart(_signum: int, _frame: object) -> None:
        profs["main"].disable()
        profs["main"], profs["store"] = cProfile.Profile(), cProfile.Profile()
        calls.clear()
        cpu_s.clear()
        profs["main"].enable()

    signal.signal(signal.SIGUSR1, restart)
    original = threads.run_inline

    def profiled(coro: Coroutine[Any, Any, Any], *, on_loop: bool = False) -> Any:
        name = coro.cr_code.co_name
        started = time.thread_time()
        if not on_loop:  # on the loop: in the loop's profile
            profs["store"].enable()
        try:
            return original(coro, on_loop=on_loop)
        finally:
            if not on_loop:
                profs["store"].disable()
            calls[name] += 1
            cpu_s[name] += time.thread_time() - started

    threads.run_inline = profiled  # type: ignore[assignment]

    def dump() -> None:
        profs["main"].disable()
        profs["main"].dump_stats(str(out))
        profs["store"].dump_stats(f"{out}.store")
        table = {
            name: {"calls": calls[name], "cpu_s": round(cpu_s[name], 4)}
            for name, _ in cpu_s.most_common()
        }
        Path(f"{out}.calls.json").write_text(json.dumps(table, indent=1), encoding="utf-8")

    atexit.register(dump)
    sys.argv = [module, *sys.argv[4:]]
    profs["main"].enable()
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
