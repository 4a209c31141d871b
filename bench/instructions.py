"""Work per carried change, counted in instructions (callgrind): a figure that does not
move with the machine's load or speed, for comparing two versions of the code.

Usage::

    python bench/instructions.py                  # 200 changes, counted under callgrind
    python bench/instructions.py --tree OTHER     # the same, the daemon's code from OTHER
    python bench/instructions.py --quick          # 20 changes, CPU seconds (no valgrind)
    python bench/instructions.py --json

The CPU seconds of ``bench/scale.py --pairs`` (CPU per carried change) are the machine's
as much as the code's: on one shared 2-core machine the same code measured 1.2 and
2.1 ms an hour apart. Here every ``bpsync run --once`` is a process of its own, counted
whole by ``valgrind --tool=callgrind`` (instructions, the same for the same code and
inputs whatever else the machine does):

1. the emulators (``bench/_emu_host.py``, one pair), a store of L linked links copied
   from one filled by bulk ``INSERT`` (``bench/_fill.py``), N of them real on both
   sides; three ``run --once`` uncounted (they sync the pool as it was made), then a
   wait of ``cursor_overlap`` + 1 s (the polls' window leaves those writes);
2. **idle**: two ``run --once`` counted (start-up, an idle cycle, stop);
3. N changes, each on its own pool incident (odd ones a BigPanda tag, even ones a
   ServiceNow field: ``bench/scale_pairs.py``'s), then two ``run --once`` counted: the
   first carries them, the second polls their echoes; every change is then looked for
   on the other side (a miss is reported).

**Per carried change** = (the two counted runs after the changes - twice the last idle
run) / N. Counts are steady: the same idle run of two versions of the code differed by
0.03 %.
With ``--counter cpu`` (``--quick``) the same runs are timed in CPU seconds instead
(``getrusage`` of the children): fast, for CI, as noisy as any CPU figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _harness as h
from bench import _pairs as p
from bench._fill import create_pool, populate
from bench.scale_pairs import CHANGE_VALUES, TEMPLATE_SN_URL, arrived, fill_stores, make_change

_COLLECTED = re.compile(r"Collected : (\d+)")


@dataclass
class Result:
    counter: str
    tree: str
    links: int
    changes: int
    carried: int = 0
    missed: int = 0
    idle_runs: list[float] = field(default_factory=list)
    change_runs: list[float] = field(default_factory=list)
    per_change: float | None = None
    seconds: float = 0.0


def count_run(counter: str, work: Path, env: dict[str, str], label: str) -> float:
    """One ``python -m sync run --once``: its instructions (callgrind) or CPU seconds."""
    cmd = [h.PYTHON, "-m", "sync", "run", "--once"]
    out_file = work / f"callgrind.{label}.out"
    if counter == "instructions":
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_file}", *cmd]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"run --once ({label}) exited {done.returncode}:\n{done.stderr[-3000:]}")
    if counter == "cpu":
        return round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 4)
    found = _COLLECTED.findall(done.stderr)
    if not found:
        raise RuntimeError(f"no instruction count from valgrind ({label}):\n{done.stderr[-2000:]}")
    return float(found[-1])


async def measure(args: argparse.Namespace, tmp: Path) -> Result:
    tree: Path = args.tree
    result = Result(args.counter, str(tree), args.links, args.changes)
    template = tmp / "template.db"
    await populate(f"sqlite+aiosqlite:///{template.as_posix()}", args.links, TEMPLATE_SN_URL)
    work, state = tmp / "run", tmp / "run" / "state"
    state.mkdir(parents=True)
    host = p.EmuHost(work, 1)
    started = time.monotonic()
    async with aiohttp.ClientSession() as http:
        try:
            (api,) = await host.start(http)
            fill_stores(template, state, ["default"], host.sets)
            await create_pool(api, host.sets[0], args.changes)
            top = {
                "poll_interval": 5.0,
                "retrieval_count": 100,
                "cursor_overlap": 5.0,
                "log_level": args.log_level,
            }
            config = p.write_config(work, top, host.sets, pairs=False)
            env = p.process_env(config, state, h.free_port())
            env["PYTHONPATH"] = str(tree)  # the code measured (--tree)
            env["PYTHONHASHSEED"] = "0"  # set and dict orders, so counts, run to run
            for n in range(3):  # the pool as it was made: synced, uncounted
                count_run("cpu", work, env, f"settle{n}")
            # the polls' overlap leaves those writes: an idle run then polls what a run
            # after the changes polls, no leftovers
            await asyncio.sleep(top["cursor_overlap"] + 1)
            for n in range(2):
                result.idle_runs.append(count_run(args.counter, work, env, f"idle{n}"))
                h.log(f"  idle run {n + 1}: {result.idle_runs[-1]:,.4g}")
            plan = [(k + 1, CHANGE_VALUES[k % 2]) for k in range(args.changes)]
            await asyncio.gather(*(make_change(api, i, v) for i, v in plan))
            for n in range(2):
                result.change_runs.append(count_run(args.counter, work, env, f"changes{n}"))
                h.log(f"  run {n + 1} after {args.changes} changes: {result.change_runs[-1]:,.4g}")
            result.carried = len(await arrived(api, plan))
            result.missed = args.changes - result.carried
        finally:
            host.stop()
    result.seconds = round(time.monotonic() - started, 1)
    if result.carried:
        # the last idle run is the baseline: the first counted ~2 % more in every trial
        # (77 M instructions, both versions measured), whatever the settle runs left
        extra = sum(result.change_runs) - len(result.change_runs) * result.idle_runs[-1]
        result.per_change = round(extra / args.changes, 1 if args.counter == "instructions" else 6)
    return result


def print_table(r: Result) -> None:
    unit = "instructions" if r.counter == "instructions" else "CPU s"
    print(f"work per carried change ({unit}), code of {r.tree}")
    print(f"  links {r.links:,}, changes {r.changes:,}: {r.carried:,} carried, {r.missed} missed")
    print(f"  idle runs (start-up, one idle cycle, stop): {[f'{v:,.6g}' for v in r.idle_runs]}")
    print(f"  runs after the changes (carry, echoes): {[f'{v:,.6g}' for v in r.change_runs]}")
    if r.per_change is not None:
        per = (
            f"{r.per_change:,.0f}"
            if r.counter == "instructions"
            else f"{r.per_change * 1e3:.3f} ms"
        )
        print(f"  per carried change: {per}")
    print(f"({r.seconds} s)")


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 changes, CPU seconds")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--changes", type=int, default=200)
    parser.add_argument("--links", type=int, default=500, help="links in the store")
    parser.add_argument(
        "--counter",
        choices=("instructions", "cpu"),
        default="instructions",
        help="callgrind's instruction count (default) or the runs' CPU seconds",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=("DEBUG", "INFO", "WARNING"),
        help="the daemon's (INFO, the default: a line per action, as in production)",
    )
    parser.add_argument(
        "--tree", default=str(h.ROOT), help="checkout whose sync/ the daemon runs (default: this)"
    )
    args = parser.parse_args(argv)
    args.tree = Path(args.tree).resolve()
    if args.quick:
        args.changes, args.links, args.counter = min(args.changes, 20), 100, "cpu"
    if args.counter == "instructions" and shutil.which("valgrind") is None:
        parser.error(
            "valgrind is not installed (Debian: apt-get install valgrind), or --counter cpu"
        )
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bpsync-bench-instr-") as tmp:
        result = asyncio.run(measure(args, Path(tmp)))
    out = {
        "benchmark": "instructions",
        "quick": args.quick,
        "machine": h.machine(),
        **asdict(result),
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    if args.json:
        print(json.dumps(out))
    else:
        print_table(result)
    return out


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
