"""Many emulator pairs in one process, for the many-pairs benchmark (``bench/scale_pairs.py``).

Usage::

    python bench/_emu_host.py --count N [--rate-limit R]

Serves ``N`` ServiceNow and ``N`` BigPanda emulator apps (the same apps as
``bpsync emulate``: :func:`sync.emulators.servicenow.create_app`,
:func:`sync.emulators.bigpanda.create_app`), each on its own loopback port, in one event
loop, then prints one JSON line ``{"servicenow": [port, ...], "bigpanda": [port, ...]}``
(set ``i`` = the i-th of each list) and serves until SIGTERM or SIGINT. Each app keeps its
own data and its own ``/_emulator/stats``, so a benchmark reads every pair's request
counts apart. 100 emulator processes for 50 pairs would cost more memory and CPU than
the daemon under test; one process serves them all.

BigPanda's rate limits are off unless ``--rate-limit`` is given (requests/s per endpoint
and token, per app).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sync.emulators import bigpanda, servicenow
from sync.emulators.control import serve_app


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


async def serve(count: int, rate_limit: float | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with contextlib.AsyncExitStack() as stack:
        sn_ports: list[int] = []
        bp_ports: list[int] = []
        for _ in range(count):
            sn = await stack.enter_async_context(serve_app(servicenow.create_app()))
            bp = await stack.enter_async_context(
                serve_app(bigpanda.create_app(rate_limit_per_s=rate_limit))
            )
            sn_ports.append(_port(sn))
            bp_ports.append(_port(bp))
        print(json.dumps({"servicenow": sn_ports, "bigpanda": bp_ports}), flush=True)
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, required=True, help="emulator pairs to serve")
    parser.add_argument(
        "--rate-limit", type=float, default=0, help="BigPanda requests/s (0: off, the default)"
    )
    args = parser.parse_args()
    if args.count < 1:
        parser.error("--count must be at least 1")
    asyncio.run(serve(args.count, args.rate_limit or None))


if __name__ == "__main__":
    main()
