"""sync.cli.common.on_stop_signals: a command's stop on SIGINT/SIGTERM, or the
signals' default where the loop cannot take them."""

from __future__ import annotations

import asyncio
import os
import signal
import threading

from sync.cli.common import on_stop_signals


async def test_a_signal_reaches_the_handler() -> None:
    got = asyncio.Event()
    seen: list[int] = []

    def handler(signum: int) -> None:
        seen.append(signum)
        got.set()

    loop = asyncio.get_running_loop()
    try:
        assert on_stop_signals(handler) is True
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(got.wait(), timeout=5)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    assert seen == [signal.SIGTERM]


def test_a_loop_outside_the_main_thread_keeps_the_default() -> None:
    answers: list[bool] = []
    before = signal.getsignal(signal.SIGTERM)

    async def install() -> None:
        answers.append(on_stop_signals(lambda _signum: None))

    thread = threading.Thread(target=lambda: asyncio.run(install()))
    thread.start()
    thread.join(timeout=10)
    assert answers == [False]
    assert signal.getsignal(signal.SIGTERM) == before  # nothing installed
